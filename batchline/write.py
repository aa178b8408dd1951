"""Write the final table: exactly one row per input document, with cost and attempts.

Part files are keyed by the batch that holds each request's latest result (and by shard for the
invalid documents), so a rerun rewrites the same files and removes the ones no longer owed.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal, assert_never

import orjson
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, Field

from batchline import schemas, structured
from batchline.config import RunError
from batchline.failpoints import failpoint
from batchline.ledger import Ledger
from batchline.pricing import USAGE_COLUMNS, price_table, row_costs
from batchline.request_index import open_index
from batchline.storage import STAMP, OutputLayout, reuse_or_restamp, write_stamp
from batchline.wording import counted


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
    manifest's stamp covers the schema), and is still whole, is kept. The flow runs the same
    steps as tasks, the parts mapped over its task runner's workers.
    """
    plan = plan_write(layout)
    parts = [write_part(layout, part, output_schema) for part in plan.parts]
    return finish_write(layout, plan, parts, output_schema)


class ResultsPart(BaseModel):
    """One results part to write: a batch's answers, or the rows of one ``invalid/`` part."""

    kind: Literal["batch", "invalid"]
    key: str = Field(description="The batch id, or the name of the invalid part.")

    @property
    def name(self) -> str:
        """The part's file in ``results/``, the same on every run."""
        match self.kind:
            case "batch":
                return f"batch-{self.key}.parquet"
            case "invalid":
                return f"invalid-{self.key}"
            case _:
                assert_never(self.kind)


class WrittenPart(BaseModel):
    """What one written part adds to the run's summary."""

    name: str
    rows: int
    by_status: dict[str, int]
    error_types: dict[str, int]
    tokens: dict[str, int]
    cost_usd: float
    unpriced_models: list[str]


@dataclass(frozen=True)
class WritePlan:
    """What writing takes: the inputs' fingerprint, and the parts unless already written."""

    inputs: str
    parts: list[ResultsPart]
    batches: int
    written: RunSummary | None = None


def plan_write(layout: OutputLayout) -> WritePlan:
    """The parts to write, or none when ``results/`` already answers the inputs.

    Runs where the request index is (the driver): it refuses while a request has no result, and
    leaves beside each batch's part-to-be the rows of its answers (custom_id, doc_id, attempts)
    as a hidden file, so a part's writer needs the output root alone, wherever it runs. They go
    through files rather than task arguments so no process holds more than one batch of them.
    """
    inputs = results_inputs(layout)
    if (stamped := reuse_or_restamp(layout, "results", inputs)) is not None:
        written = RunSummary.model_validate(stamped)
        return WritePlan(inputs, [], written.batches, written)
    with open_index(layout) as index:
        missing, first = index.unanswered()
        if missing:
            raise WriteError(
                f"{counted(missing, 'document')} have no collected result yet (first: {first}); "
                "run the pipeline again to finish them"
            )
        batch_ids = sorted(index.answering_batches())
        for batch_id in batch_ids:
            layout.write_table("results", _answers_name(batch_id), index.answered_by(batch_id))
    parts = [ResultsPart(kind="batch", key=b) for b in batch_ids]
    parts += [ResultsPart(kind="invalid", key=n) for n in layout.names("invalid", ".parquet")]
    return WritePlan(inputs, parts, len(batch_ids))


def write_part(
    layout: OutputLayout, part: ResultsPart, output_schema: dict[str, Any] | None = None
) -> WrittenPart:
    """Write one results part from files under the output root alone; what it adds up to."""
    fields = _typed_fields(output_schema)
    unpriced: set[str] = set()
    match part.kind:
        case "batch":
            rows = _batch_rows(layout, part.key, fields, unpriced)
        case "invalid":
            rows = _invalid_rows(layout.read_table("invalid", part.key))
        case _:
            assert_never(part.kind)
    schema = schemas.results(fields)
    columns = {
        field.name: rows.column(field.name).cast(field.type)
        if field.name in rows.column_names
        else pa.nulls(rows.num_rows, field.type)
        for field in schema
    }
    table = pa.table(columns, schema=schema)
    if table.num_rows:  # an empty part is left out; a table of no rows is written at the end
        layout.write_table("results", part.name, table)
    return _tally(part.name, table, unpriced)


def finish_write(
    layout: OutputLayout,
    plan: WritePlan,
    parts: list[WrittenPart],
    output_schema: dict[str, Any] | None = None,
) -> RunSummary:
    """Drop stale parts and the answers files, add the parts up, and stamp ``results/``."""
    if plan.written is not None:
        return plan.written
    written = [p for p in parts if p.rows]
    wanted = {p.name for p in written}
    if not wanted:  # no documents: still a table with the schema, so reading results works
        empty = schemas.results(_typed_fields(output_schema)).empty_table()
        layout.write_table("results", "empty.parquet", empty)
        wanted.add("empty.parquet")
    folder = layout.path("results")
    stale = [layout.path("results", n) for n in set(layout.names("results", ".parquet")) - wanted]
    # Listed as they are (names() hides them), so those a killed write left go too.
    answers = [
        p for p in layout.fs.ls(folder, detail=False) if p.rsplit("/", 1)[-1].startswith(_ANSWERS)
    ]
    if stale or answers:
        layout.fs.rm([*stale, *answers])
    summary = _summary(layout.url("results"), plan.batches, written)
    write_stamp(layout, ("results",), plan.inputs, summary)
    failpoint("write.done")
    return summary


# Hidden (names() and readers of results/ skip files starting with a dot), removed when done.
_ANSWERS = ".answers-"


def _typed_fields(output_schema: dict[str, Any] | None) -> pa.Schema | None:
    """The typed columns a run with an output schema adds to the results."""
    return None if output_schema is None else structured.arrow_schema(output_schema)


def _answers_name(batch_id: str) -> str:
    return f"{_ANSWERS}{batch_id}.parquet"


def _batch_rows(
    layout: OutputLayout, batch_id: str, fields: pa.Schema | None, unpriced: set[str]
) -> pa.Table:
    """One batch's rows that are their request's latest answer (a row superseded by a later
    attempt belongs to that attempt's batch file), with cost and typed columns."""
    collected = layout.read_table("collected", f"{batch_id}.parquet")
    answers = layout.read_table("results", _answers_name(batch_id))
    rows = collected.join(answers, "custom_id", join_type="inner")
    rows = rows.append_column("cost_usd", row_costs(rows, unpriced))
    if fields is not None:
        valid = pc.equal(rows.column("status"), "succeeded").combine_chunks()
        for name, column in zip(
            fields.names,
            structured.typed_columns(rows.column("text"), valid, fields).columns,
            strict=True,
        ):
            rows = rows.append_column(name, column)
    return rows


def _invalid_rows(invalid: pa.Table) -> pa.Table:
    """The rows of documents that never became a request."""
    n = invalid.num_rows
    return pa.table(
        {
            "doc_id": invalid.column("doc_id"),
            "status": pa.repeat("invalid", n),
            "error_type": pa.repeat("invalid_document", n),
            "error_message": invalid.column("reason"),
            "attempts": pa.repeat(pa.scalar(0, pa.int32()), n),
        }
    )


def _tally(name: str, rows: pa.Table, unpriced: set[str]) -> WrittenPart:
    """What the part ``name`` holding ``rows`` adds to the summary."""
    by_status = {
        item["values"]: item["counts"]
        for item in pc.value_counts(rows.column("status")).to_pylist()
    }
    errored = rows.filter(pc.equal(rows.column("status"), "errored"))
    error_types: Counter[str] = Counter()
    for item in pc.value_counts(errored.column("error_type")).to_pylist():
        error_types[item["values"] or "unknown"] += item["counts"]
    return WrittenPart(
        name=name,
        rows=rows.num_rows,
        by_status=by_status,
        error_types=dict(error_types),
        tokens={c: pc.sum(rows.column(c)).as_py() or 0 for c in USAGE_COLUMNS},
        cost_usd=pc.sum(rows.column("cost_usd")).as_py() or 0.0,
        unpriced_models=sorted(unpriced),
    )


def _summary(output: str, batches: int, parts: list[WrittenPart]) -> RunSummary:
    """The run's summary: the written parts' tallies added up."""
    by_status: Counter[str] = Counter()
    error_types: Counter[str] = Counter()
    tokens: Counter[str] = Counter()
    unpriced: set[str] = set()
    for part in parts:
        by_status.update(part.by_status)
        error_types.update(part.error_types)
        tokens.update(part.tokens)
        unpriced.update(part.unpriced_models)
    # With a model unpriced, the sum of the priced rows would understate the bill: unknown.
    cost = None if unpriced else sum(p.cost_usd for p in parts)
    discount = price_table().batch_discount
    return RunSummary(
        output=output,
        rows=sum(by_status.values()),
        by_status=dict(by_status),
        tokens=dict(tokens),
        cost_usd=cost,
        standard_cost_usd=None if cost is None else cost / discount,
        batches=batches,
        unpriced_models=sorted(unpriced),
        error_types=dict(error_types),
    )
