"""Write the final table: exactly one row per input document, with cost and attempts.

Part files are keyed by the batch that holds each request's latest result (and by shard for the
invalid documents), so a rerun rewrites the same files and removes the ones no longer owed.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from pydantic import BaseModel

from batchline import schemas
from batchline.config import RunError
from batchline.failpoints import failpoint
from batchline.ledger import Ledger, RequestState
from batchline.pricing import Usage, cost_usd, price_table
from batchline.storage import OutputLayout

log = logging.getLogger(__name__)

_TOKEN_COLUMNS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
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


def write_results(layout: OutputLayout) -> RunSummary:
    """Join manifest, ledger and collected results into ``results/``; summarise them."""
    ledger = Ledger(layout)
    states = ledger.request_states()
    doc_ids, latest = _latest_states(layout, states)
    wanted: set[str] = set()
    status_counts: Counter[str] = Counter()
    tokens: Counter[str] = Counter()
    costs: list[float | None] = []
    unpriced: set[str] = set()
    batch_ids = {s.batch_id for s in latest.values()}
    for entry in ledger.entries():
        if entry.batch_id not in batch_ids:
            continue
        assert entry.batch_id is not None
        collected = layout.read_table("collected", f"{entry.batch_id}.parquet").to_pylist()
        rows = []
        for row in collected:
            state = latest.get(row["custom_id"])
            if state is None or state.batch_id != entry.batch_id:
                continue  # superseded by a later attempt, or no longer in the source
            row["doc_id"] = doc_ids[row["custom_id"]]
            row["attempts"] = state.attempts
            row["cost_usd"] = _row_cost(row, unpriced)
            rows.append(row)
        name = f"batch-{entry.batch_id}.parquet"
        if rows:
            layout.write_table("results", name, schemas.table(rows, schemas.RESULTS))
            wanted.add(name)
        _tally(rows, status_counts, tokens, costs)
    for name in layout.names("invalid", ".parquet"):
        invalid = layout.read_table("invalid", name).to_pylist()
        rows = [
            {
                "doc_id": r["doc_id"],
                "status": "invalid",
                "error_type": "invalid_document",
                "error_message": r["reason"],
                "attempts": 0,
            }
            for r in invalid
        ]
        if rows:
            layout.write_table("results", f"invalid-{name}", schemas.table(rows, schemas.RESULTS))
            wanted.add(f"invalid-{name}")
        _tally(rows, status_counts, tokens, costs)
    for stale in set(layout.names("results", ".parquet")) - wanted:
        layout.fs.rm(layout.path("results", stale))
    failpoint("write.done")
    for model in sorted(unpriced):
        log.warning("no price for model %r: its rows have cost_usd null", model)
    priced = [c for c in costs if c is not None]
    total = sum(priced) if priced else None
    discount = price_table().batch_discount
    return RunSummary(
        output=layout.url("results"),
        rows=sum(status_counts.values()),
        by_status=dict(status_counts),
        tokens=dict(tokens),
        cost_usd=total,
        standard_cost_usd=None if total is None else total / discount,
        batches=len(batch_ids),
        unpriced_models=sorted(unpriced),
    )


def _latest_states(
    layout: OutputLayout, states: dict[str, RequestState]
) -> tuple[dict[str, str], dict[str, RequestState]]:
    """doc_id per custom_id, and the state answering each manifest request's current params."""
    doc_ids: dict[str, str] = {}
    latest: dict[str, RequestState] = {}
    missing: list[str] = []
    for name in layout.names("manifest", ".parquet"):
        part = layout.read_table("manifest", name, columns=["custom_id", "doc_id", "params_hash"])
        for cid, doc_id, ph in zip(
            *(part.column(c).to_pylist() for c in ("custom_id", "doc_id", "params_hash")),
            strict=True,
        ):
            state = states.get(cid)
            if state is None or state.params_hash != ph or state.status is None:
                missing.append(doc_id)
                continue
            doc_ids[cid] = doc_id
            latest[cid] = state
    if missing:
        raise WriteError(
            f"{len(missing)} documents have no collected result yet (first: {missing[:3]}); "
            "run the pipeline again to finish them"
        )
    return doc_ids, latest


def _row_cost(row: dict[str, Any], unpriced: set[str]) -> float | None:
    if row["status"] != "succeeded":
        return 0.0
    usage = Usage(**{c: row[c] or 0 for c in _TOKEN_COLUMNS})
    cost = cost_usd(row["model"], usage)
    if cost is None:
        unpriced.add(row["model"])
    return cost


def _tally(
    rows: list[dict[str, Any]],
    status_counts: Counter[str],
    tokens: Counter[str],
    costs: list[float | None],
) -> None:
    for row in rows:
        status_counts[row["status"]] += 1
        for column in _TOKEN_COLUMNS:
            tokens[column] += row.get(column) or 0
        costs.append(row.get("cost_usd"))
