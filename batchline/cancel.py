"""Stop paying for an output's batches: cancel every batch of its ledger that is still processing.

The API bills only the requests it processed before the cancel; the others end ``canceled``. A
later run of the same command collects every answer, and keeps canceled requests as ``canceled``
rows: they were stopped on purpose, so only a run with ``retry_canceled`` resubmits them
(batchline/retry.py). Requests that were never submitted would be submitted by any run, so a run
that is still going must be stopped first.
"""

from __future__ import annotations

from collections.abc import Callable

import anthropic
from pydantic import BaseModel

from batchline.ledger import Ledger
from batchline.storage import OutputLayout


class Canceled(BaseModel):
    """One of the output's batches after the cancel call."""

    batch_id: str
    request_count: int
    processing_status: str  # canceling, or ended when it had ended before the call


def cancel_processing(
    connect: Callable[[], anthropic.Anthropic], layout: OutputLayout
) -> list[Canceled]:
    """Cancel the ledger's batches whose results are not collected yet; what each became.

    ``connect`` makes the client, only when there is something to cancel.
    """
    uncollected = Ledger(layout).uncollected()
    if not uncollected:
        return []
    client = connect()
    canceled = []
    for entry in uncollected:
        assert entry.batch_id is not None  # uncollected entries have their batch
        try:
            batch = client.messages.batches.cancel(entry.batch_id)
        except anthropic.BadRequestError:
            # The API refuses to cancel a batch that has ended; anything else is a real error.
            batch = client.messages.batches.retrieve(entry.batch_id)
            if batch.processing_status != "ended":
                raise
        canceled.append(
            Canceled(
                batch_id=entry.batch_id,
                request_count=entry.request_count,
                processing_status=batch.processing_status,
            )
        )
    return canceled
