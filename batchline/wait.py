"""Wait for batches to end, polling with backoff instead of a fixed interval.

A batch takes minutes to 24 hours and request_counts stay at ``processing`` until it ends, so
frequent polls buy nothing: start at ``poll_interval`` and stretch towards ``max_poll_interval``.
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

BACKOFF_FACTOR = 1.5
EXPIRY_WARNING = timedelta(hours=2)


def poll_delays(first: float, cap: float) -> Iterable[float]:
    """first, first*1.5, ... capped at ``cap``, forever."""
    delay = first
    while True:
        yield min(delay, cap)
        delay = min(delay * BACKOFF_FACTOR, cap)


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
    delays = iter(poll_delays(poll_interval, max_poll_interval))
    warned: set[str] = set()
    while True:
        batches = retrieve_all(client, batch_ids)
        on_poll(batches)
        failpoint("wait.polled")
        _warn_near_expiry(batches, warned)
        if all_ended(batches):
            return batches
        delay = next(delays)
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
