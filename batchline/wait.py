"""Wait for batches to end, polling less often the longer they have run.

A batch takes minutes to 24 hours and request_counts stay at ``processing`` until it ends, so
frequent polls buy nothing. The wait before the next poll is a fifth of the age of the oldest
batch still processing (between ``poll_interval`` and ``max_poll_interval``): an ended batch is
seen at most a fifth of its time late, a long batch costs a poll per ``max_poll_interval``, and
a run resumed hours after its submit polls at the pace of its batches' age, not from the start.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

import anthropic
from anthropic.types.messages import MessageBatch

from batchline.failpoints import failpoint

log = logging.getLogger(__name__)

LATENESS = 0.2
EXPIRY_WARNING = timedelta(hours=2)


def next_delay(batches: dict[str, MessageBatch], first: float, cap: float) -> float:
    """Seconds until the next poll: a fifth of the oldest processing batch's age, within
    [``first``, ``cap``]. Its age comes from the API's ``created_at``, so our clock running
    behind the API's only shortens the wait to ``first``."""
    created = [b.created_at for b in batches.values() if b.processing_status != "ended"]
    age = (datetime.now(UTC) - min(created)).total_seconds() if created else 0.0
    return min(max(age * LATENESS, first), cap)


def retrieve_all(client: anthropic.Anthropic, batch_ids: Iterable[str]) -> dict[str, MessageBatch]:
    """One retrieve per batch."""
    return {batch_id: client.messages.batches.retrieve(batch_id) for batch_id in batch_ids}


def all_ended(batches: dict[str, MessageBatch]) -> bool:
    return all(b.processing_status == "ended" for b in batches.values())


def wait_for_batches(
    client: anthropic.Anthropic,
    batch_ids: list[str],
    poll_interval: float,
    max_poll_interval: float,
    on_poll: Callable[[dict[str, MessageBatch]], None] = lambda _: None,
    sleep: Callable[[float], None] = time.sleep,
    give_up_after: float | None = None,
) -> dict[str, MessageBatch]:
    """Poll until every batch has ended; with ``give_up_after`` seconds, return early instead.

    Returning early (the caller checks ``all_ended``) lets a deployed flow suspend rather than
    hold a worker for hours.
    """
    started = time.monotonic()
    warned: set[str] = set()
    while True:
        batches = retrieve_all(client, batch_ids)
        on_poll(batches)
        failpoint("wait.polled")
        _warn_near_expiry(batches, warned)
        if all_ended(batches):
            return batches
        delay = next_delay(batches, poll_interval, max_poll_interval)
        if give_up_after is not None and time.monotonic() - started + delay > give_up_after:
            return batches
        sleep(delay)


def _warn_near_expiry(batches: dict[str, MessageBatch], warned: set[str]) -> None:
    now = datetime.now(UTC)
    for batch in batches.values():
        if (
            batch.processing_status != "ended"
            and batch.id not in warned
            and batch.expires_at - now < EXPIRY_WARNING
        ):
            warned.add(batch.id)
            log.warning(
                "batch %s is still processing and expires at %s: unprocessed requests will come "
                "back expired and be retried in a new batch",
                batch.id,
                batch.expires_at.isoformat(),
            )
