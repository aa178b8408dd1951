"""Write the final table: exactly one row per input document, with cost and attempts.

Part files are keyed by the batch that holds each request's latest result (and by shard for the
invalid documents), so a rerun rewrites the same files and removes the ones no longer owed.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel

from batchline import schemas, structured
from batchline.config import RunError
from batchline.failpoints import failpoint
from batchline.ledger import Ledger
from batchline.pricing import price_table, usage_cost
from batchline.request_index import RequestIndex, open_index
from batchline.storage import STAMP, OutputLayout, reuse_or_restamp, write_stamp

_TOKEN_COLUMNS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "cache_creation_1h_input_tokens",
)


class WriteError(RunError):
    """The final table cannot be written because some request has no result yet."""


class RunSummary(BaseModel):
    """What a run produced, for the CLI, the artifacts and the tests."""

    output: str
    rows: int
    by_status: dict[str, int]
    tokens: dict[str, int]
    cost_usd: float | None
    standard_cost_usd: float | None
    batches: int
    unpriced_models: list[str]
    # Summaries stamped before this field existed are still read back, hence the default.
    error_types: dict[str, int] = {}


def results_inputs(layout: OutputLayout) -> str:
    """A fingerprint of everything the results table is made of: manifest, ledger, results."""
    state = {
        "manifest": layout.read_json("manifest", STAMP)
        if layout.exists("manifest", STAMP)
        else None,
        "files": {area: layout.sizes(area) for area in ("manifest", "invalid", "collected")},
        "ledger": [e.model_dump(mode="json") for e in Ledger(layout).entries()],
    }
    return hashlib.sha256(orjson.dumps(state, option=orjson.OPT_SORT_KEYS)).hexdigest()


def write_results(layout: OutputLayout, output_schema: dict[str, Any] | None = None) -> RunSummary:
    """Join manifest, ledger and collected results into ``results/``; summarise them.

    With ``output_schema``, each top-level field of the succeeded replies becomes a typed column
    after the standard ones. A results table on disk that was written from the same inputs (the
    manifest's stamp covers the schema), and is still whole, is kept.
    """
    inputs = results_inputs(layout)
    if (written := reuse_or_restamp(layout, "results", inputs)) is not None:
        return RunSummary.model_validate(written)
    fields = structured.arrow_schema(output_schema) if output_schema is not None else None
    schema = schemas.results(fields)
    with open_index(layout) as index:
        missing, first = index.unanswered()
        if missing:
            raise WriteError(
                f"{missing} documents have no collected result yet (first: {first}); "
                "run the pipeline again to finish them"
            )
        batch_ids = index.answering_batches()
        tally = _Tally()
        wanted: set[str] = set()
        for batch_id in sorted(batch_ids):
            _write_batch(layout, batch_id, index, fields, schema, tally, wanted)
    for name in layout.names("invalid", ".parquet"):
        invalid = layout.read_table("invalid", name)
        n = invalid.num_rows
        rows = pa.table(
            {
                "doc_id": invalid.column("doc_id"),
                "status": pa.repeat("invalid", n),
                "error_type": pa.repeat("invalid_document", n),
                "error_message": invalid.column("reason"),
                "attempts": pa.repeat(pa.scalar(0, pa.int32()), n),
            }
        )
        _write_part(layout, f"invalid-{name}", rows, schema, tally, wanted)
    if not wanted:  # no documents: still a table with the schema, so reading results works
        layout.write_table("results", "empty.parquet", schema.empty_table())
        wanted.add("empty.parquet")
    for stale in set(layout.names("results", ".parquet")) - wanted:
        layout.fs.rm(layout.path("results", stale))
    summary = tally.summary(layout.url("results"), len(batch_ids))
    write_stamp(layout, ("results",), inputs, summary)
    failpoint("write.done")
    return summary


class _Tally:
    """Running totals of the rows written, for the run summary."""

    def __init__(self) -> None:
        self.by_status: Counter[str] = Counter()
        self.error_types: Counter[str] = Counter()
        self.tokens: Counter[str] = Counter()
        self.cost = 0.0
        self.unpriced: set[str] = set()

    def add(self, rows: pa.Table) -> None:
        for item in pc.value_counts(rows.column("status")).to_pylist():
            self.by_status[item["values"]] += item["counts"]
        errored = rows.filter(pc.equal(rows.column("status"), "errored"))
        for item in pc.value_counts(errored.column("error_type")).to_pylist():
            self.error_types[item["values"] or "unknown"] += item["counts"]
        for column in _TOKEN_COLUMNS:
            self.tokens[column] += pc.sum(rows.column(column)).as_py() or 0
        self.cost += pc.sum(rows.column("cost_usd")).as_py() or 0.0

    def summary(self, output: str, batches: int) -> RunSummary:
        # With a model unpriced, the sum of the priced rows would understate the bill: unknown.
        cost = None if self.unpriced else self.cost
        discount = price_table().batch_discount
        return RunSummary(
            output=output,
            rows=sum(self.by_status.values()),
            by_status=dict(self.by_status),
            tokens=dict(self.tokens),
            cost_usd=cost,
            standard_cost_usd=None if cost is None else cost / discount,
            batches=batches,
            unpriced_models=sorted(self.unpriced),
            error_types=dict(self.error_types),
        )


def _write_part(
    layout: OutputLayout,
    name: str,
    rows: pa.Table,
    schema: pa.Schema,
    tally: _Tally,
    wanted: set[str],
) -> None:
    """One results part in ``schema`` (columns it lacks are null), counted in ``tally``."""
    if not rows.num_rows:
        return
    columns = {
        field.name: rows.column(field.name).cast(field.type)
        if field.name in rows.column_names
        else pa.nulls(rows.num_rows, field.type)
        for field in schema
    }
    table = pa.table(columns, schema=schema)
    layout.write_table("results", name, table)
    wanted.add(name)
    tally.add(table)


def _write_batch(
    layout: OutputLayout,
    batch_id: str,
    index: RequestIndex,
    fields: pa.Schema | None,
    schema: pa.Schema,
    tally: _Tally,
    wanted: set[str],
) -> None:
    """The results part of one batch: its rows that are their request's latest answer (a row
    superseded by a later attempt belongs to that attempt's batch file)."""
    collected = layout.read_table("collected", f"{batch_id}.parquet")
    rows = collected.join(index.answered_by(batch_id), "custom_id", join_type="inner")
    rows = rows.append_column("cost_usd", _costs(rows, tally.unpriced))
    if fields is not None:
        valid = pc.equal(rows.column("status"), "succeeded").combine_chunks()
        for name, column in zip(
            fields.names,
            structured.typed_columns(rows.column("text"), valid, fields).columns,
            strict=True,
        ):
            rows = rows.append_column(name, column)
    _write_part(layout, f"batch-{batch_id}.parquet", rows, schema, tally, wanted)


def _costs(rows: pa.Table, unpriced: set[str]) -> pa.Array:
    """cost_usd of each row: its usage at batch prices; 0 unless billed; null if unpriced."""
    # An invalid_output reply was generated, so it is paid for like a succeeded one.
    succeeded = pc.is_in(rows.column("status"), pa.array(["succeeded", "invalid_output"])).to_numpy(
        zero_copy_only=False
    )
    models = rows.column("model").to_numpy(zero_copy_only=False)
    tokens = {
        c: pc.fill_null(rows.column(c), 0).to_numpy().astype(np.float64) for c in _TOKEN_COLUMNS
    }
    costs = np.zeros(rows.num_rows)
    unknown = np.zeros(rows.num_rows, dtype=bool)
    for model in set(models[succeeded]):
        mine = succeeded & (models == model)
        price = price_table().for_model(model)
        if price is None:
            unpriced.add(model)
            unknown |= mine
            continue
        costs[mine] = usage_cost(price, *(tokens[c][mine] for c in _TOKEN_COLUMNS))
    return pa.array(costs, pa.float64(), mask=unknown)
