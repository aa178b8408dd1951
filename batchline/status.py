"""What an output root has asked, paid for and been answered, read from its files alone.

`batchline status OUTPUT` prints it: during a long run (from another terminal, or for a deployed
run), after a run that died, or before deciding to rerun. It reads the ledger, the steps' stamps and
the collected results, which are the source of truth; never the request index (derived, and
rebuilt by runs) nor the API. So it writes nothing, costs nothing, and is safe beside a running run.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import TypeVar

import pyarrow.compute as pc
from pydantic import BaseModel, Field

from batchline.build import BuildSummary
from batchline.ledger import Ledger
from batchline.load import LoadSummary
from batchline.pricing import USAGE_COLUMNS, row_costs
from batchline.storage import Area, OutputLayout, run_marker, stamped_summary
from batchline.write import RunSummary, results_inputs


class Processing(BaseModel):
    """A created batch whose results are not collected yet."""

    batch_id: str
    request_count: int
    expires_at: datetime | None


class OutputStatus(BaseModel):
    """An output root's state. A step's summary is None until the step has finished (or while a
    run rewrites its files)."""

    output: str
    source: str
    loaded: LoadSummary | None
    built: BuildSummary | None
    batches_created: int
    batches_adopted: int = Field(description="Found after a create whose response was lost.")
    creates_in_doubt: int = Field(
        description="Intents without a batch id: a create that may or may not have made a batch; "
        "the next run looks for it before paying again."
    )
    requests_submitted: int
    processing: list[Processing] = Field(description="Created, results not collected yet.")
    answers: dict[str, int] = Field(
        description="Every collected result by status, retried requests' earlier attempts too."
    )
    spent_usd: float | None = Field(
        description="What the collected answers cost at batch prices; None if a model is unpriced."
    )
    unpriced_models: list[str]
    results: RunSummary | None = Field(
        description="The results table's summary, while it answers every answer collected."
    )


def output_status(layout: OutputLayout) -> OutputStatus:
    """The state of the output at ``layout``; ConfigError if it holds no batchline run."""
    marker = run_marker(layout)
    ledger = Ledger(layout)
    entries = ledger.entries()
    created = [e for e in entries if e.batch_id is not None]
    collected = {name.removesuffix(".parquet") for name in layout.names("collected", ".parquet")}
    answers: Counter[str] = Counter()
    spent = 0.0
    unpriced: set[str] = set()
    # The ledger's batches only: what this output paid for.
    for batch_id in sorted(collected & {e.batch_id for e in created}):
        rows = layout.read_table(
            "collected", f"{batch_id}.parquet", columns=["status", "model", *USAGE_COLUMNS]
        )
        for item in pc.value_counts(rows.column("status")).to_pylist():
            answers[item["values"]] += item["counts"]
        spent += pc.sum(row_costs(rows, unpriced)).as_py() or 0.0
    return OutputStatus(
        output=layout.root,
        source=marker.source,
        loaded=_summary(layout, "documents", LoadSummary),
        built=_summary(layout, "manifest", BuildSummary),
        batches_created=len(created),
        batches_adopted=sum(e.adopted for e in created),
        creates_in_doubt=len(entries) - len(created),
        requests_submitted=sum(e.request_count for e in created),
        processing=[
            Processing(batch_id=e.batch_id, request_count=e.request_count, expires_at=e.expires_at)
            for e in ledger.uncollected()
            if e.batch_id is not None
        ],
        answers=dict(answers),
        spent_usd=None if unpriced else spent,
        unpriced_models=sorted(unpriced),
        results=_summary(layout, "results", RunSummary, results_inputs(layout)),
    )


Summary = TypeVar("Summary", bound=BaseModel)


def _summary(
    layout: OutputLayout, area: Area, model: type[Summary], inputs: str | None = None
) -> Summary | None:
    """The summary stamped in ``area`` while its files are as the step left them."""
    recorded = stamped_summary(layout, area, inputs)
    return None if recorded is None else model.model_validate(recorded)
