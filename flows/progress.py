"""What a run is waiting for and how far its batches are: shared by the wait task and the check
that resumes a suspended run (flows/check.py).

Both look at the same things (the ledger's uncollected batches, one retrieve per batch) and show
the same progress artifact, so a suspended run's progress keeps moving while no worker holds it.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from anthropic.types.messages import MessageBatch
from prefect import get_client
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterType,
)
from prefect.client.schemas.sorting import ArtifactSort

from batchline.ledger import Ledger
from batchline.storage import OutputLayout

PROGRESS_DESCRIPTION = "Requests processed across the batches being waited for"


def outstanding_batch_ids(layout: OutputLayout) -> list[str]:
    """Batches the ledger holds whose results are not collected yet: what a run waits for."""
    return [e.batch_id for e in Ledger(layout).uncollected() if e.batch_id]


def batches_to_wait_for(layout: OutputLayout, submitted: list[str]) -> list[str]:
    """The ledger's uncollected batches, those ``submitted`` by this round first.

    ``submitted`` is submit's result; its own id objects are kept so Prefect links the wait and
    collect runs that take them to the submit run. The rest are batches an earlier (killed) run
    left in flight, which the ledger, not this run, knows about.
    """
    outstanding = outstanding_batch_ids(layout)
    ours = [b for b in submitted if b in outstanding]
    return ours + [b for b in outstanding if b not in ours]


def processed_percent(batches: dict[str, MessageBatch]) -> float:
    """Share of the batches' requests that are no longer processing, in percent."""
    counts = [b.request_counts for b in batches.values()]
    total = sum(c.processing + c.succeeded + c.errored + c.canceled + c.expired for c in counts)
    done = total - sum(c.processing for c in counts)
    return 100.0 * done / max(total, 1)


def describe(batch: MessageBatch) -> str:
    """One log line of a batch's status and request counts, as plain key=value pairs."""
    c = batch.request_counts
    return (
        f"{batch.id} {batch.processing_status}: processing={c.processing} "
        f"succeeded={c.succeeded} errored={c.errored} expired={c.expired} canceled={c.canceled}"
    )


def latest_expiry(batches: dict[str, MessageBatch]) -> datetime | None:
    """When the last still-processing batch expires; None when all have ended."""
    running = [b.expires_at for b in batches.values() if b.processing_status != "ended"]
    return max(running) if running else None


def new_progress_artifact() -> UUID:
    """A progress artifact at 0% on the current run."""
    artifact = create_progress_artifact(0.0, description=PROGRESS_DESCRIPTION)
    assert isinstance(artifact, UUID)  # sync call: the id, not an awaitable
    return artifact


def update_progress(artifact: UUID, batches: dict[str, MessageBatch]) -> None:
    update_progress_artifact(artifact, processed_percent(batches))


def latest_progress_artifact(flow_run_id: UUID) -> UUID | None:
    """The newest progress artifact of a flow run (its latest wait), if it has one."""
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
                type=ArtifactFilterType(any_=["progress"]),
            ),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
    return found[0].id if found else None
