"""Submit pending requests as batches, two-phase, so that no request is ever paid for twice.

The SDK retries a failed POST on its own, and a create whose response was lost has already made a
paid batch; the API has no idempotency key. So create runs with the SDK's retries off, every
create is preceded by a ledger intent, and after an ambiguous failure we look for the batch the
call may have made (created after the intent, same request count, not in our ledger) and adopt it
instead of creating another.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from datetime import timedelta

import anthropic
import pyarrow as pa
from anthropic.types.messages import MessageBatch

from batchline.build import request_line, split_batches
from batchline.config import JobConfig, RunError
from batchline.failpoints import failpoint
from batchline.ledger import Ledger, LedgerEntry
from batchline.request_index import index_path, open_index
from batchline.retry import Submission
from batchline.storage import OutputLayout
from batchline.wording import counted

log = logging.getLogger(__name__)

# Our clock and the API's may disagree; a batch created this long before our intent still counts.
ADOPTION_CLOCK_SKEW = timedelta(minutes=5)
MAX_CREATE_ATTEMPTS = 8
# Statuses after which the batch may or may not exist: the server may have acted before failing.
_AMBIGUOUS_STATUSES = frozenset({408, 409})


class SubmitError(RunError):
    """A batch could not be submitted; nothing was paid for the requests it names."""


def submit_pending(
    client: anthropic.Anthropic,
    layout: OutputLayout,
    job: JobConfig,
    kind: Submission | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> list[LedgerEntry]:
    """Submit the manifest requests of ``kind`` (None: new and retries); return the new entries.

    At most ``job.max_batches_in_flight`` batches are left uncollected, so the API's queue limit
    is respected; the caller collects and calls again while requests are pending.
    """
    ledger = Ledger(layout)
    entries = ledger.entries()
    # Batches that are ours, and batches we once adopted in error: neither is adoptable.
    known = {e.batch_id for e in entries if e.batch_id}
    known.update(b for e in entries for b in e.rejected_batch_ids)
    created: list[LedgerEntry] = []
    for entry in entries:
        if entry.batch_id is None:
            # A run died between intent and answer, or adopted a batch that was not its own: the
            # intent's batch may exist.
            batch = find_adoptable(client, entry, known)
            if batch is None:
                log.warning("intent %s made no batch; its requests are pending again", entry.key)
                layout.fs.rm(layout.path("ledger", f"{entry.key}.json"))
                continue
            _log_adoption(entry, batch.id)
            created.append(_record(ledger, entry, batch, adopted=True))
            known.add(batch.id)
    in_flight = sum(
        1
        for e in ledger.entries()
        if e.batch_id and not layout.exists("collected", f"{e.batch_id}.parquet")
    )
    for chunk in _pending_chunks(layout, job, kind):
        if in_flight >= job.max_batches_in_flight:
            break
        in_flight += 1
        entry = ledger.record_intent(chunk)
        failpoint("submit.intent")
        batch, adopted = create_or_adopt(client, entry, create_body(chunk), known, sleep)
        failpoint("submit.created")
        known.add(batch.id)
        created.append(_record(ledger, entry, batch, adopted))
        if adopted:
            _log_adoption(entry, batch.id)
        else:
            log.info(
                "submitted batch %s with %s", batch.id, counted(entry.request_count, "request")
            )
    if created:
        # The index takes the new entries now, while the API processes their batches: left to
        # the first look after the wait, they would add a second per 100,000 requests to it.
        open_index(layout, job.retry_policy()).close()
    failpoint("submit.done")
    return created


def _log_adoption(entry: LedgerEntry, batch_id: str) -> None:
    instead = (
        f", in place of {', '.join(entry.rejected_batch_ids)}" if entry.rejected_batch_ids else ""
    )
    log.warning(
        "adopted batch %s for intent %s (%s), whose create response was lost%s; its "
        "results will be checked against the intent's requests",
        batch_id,
        entry.key,
        counted(entry.request_count, "request"),
        instead,
    )


def create_or_adopt(
    client: anthropic.Anthropic,
    entry: LedgerEntry,
    body: bytes,
    known_batch_ids: set[str],
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[MessageBatch, bool]:
    """Create the batch of a ledger intent; after an ambiguous failure adopt what it made.

    ``body`` is the create request's JSON, posted through the SDK client (its auth, base URL and
    error types) as it is: the SDK's own create would copy and re-serialize every request, which
    costs seconds per 100,000 requests and a second copy of the batch in memory.
    """
    creator = client.with_options(max_retries=0)
    delay = 1.0
    last_error: Exception | None = None
    for _ in range(MAX_CREATE_ATTEMPTS):
        if last_error is not None and not isinstance(last_error, anthropic.RateLimitError):
            # The batch list can lag behind a create: look again after the backoff, before
            # paying for another batch.
            adoptable = find_adoptable(client, entry, known_batch_ids)
            if adoptable is not None:
                return adoptable, True
        try:
            created = creator.post(
                "/v1/messages/batches",
                cast_to=MessageBatch,
                content=body,
                options={"headers": {"content-type": "application/json"}},
            )
            return created, False
        except anthropic.RateLimitError as exc:  # refused before anything was made
            last_error = exc
            delay = _retry_after(exc) or delay
        except (anthropic.APIConnectionError, anthropic.APIStatusError) as exc:
            if isinstance(exc, anthropic.APIStatusError) and not _ambiguous(exc.status_code):
                raise SubmitError(_refusal(entry, len(body), exc)) from exc
            last_error = exc
            adoptable = find_adoptable(client, entry, known_batch_ids)
            if adoptable is not None:
                return adoptable, True
        sleep(delay)
        delay = min(delay * 2, 60.0)
    raise SubmitError(
        f"could not create the batch of intent {entry.key} after {MAX_CREATE_ATTEMPTS} tries: "
        f"{last_error}"
    )


def find_adoptable(
    client: anthropic.Anthropic, entry: LedgerEntry, known_batch_ids: set[str]
) -> MessageBatch | None:
    """The oldest batch created since the intent, of its size, that no ledger entry claims."""
    since = entry.intent_at - ADOPTION_CLOCK_SKEW
    candidates: list[MessageBatch] = []
    for batch in client.messages.batches.list(limit=100):  # newest first
        if batch.created_at < since:
            break
        counts = batch.request_counts
        total = counts.processing + counts.succeeded + counts.errored + counts.canceled
        if batch.id not in known_batch_ids and total + counts.expired == entry.request_count:
            candidates.append(batch)
    return candidates[-1] if candidates else None


def _record(ledger: Ledger, entry: LedgerEntry, batch: MessageBatch, adopted: bool) -> LedgerEntry:
    return ledger.record_batch(entry, batch.id, batch.created_at, batch.expires_at, adopted)


def pending_parts(
    layout: OutputLayout, job: JobConfig, kind: Submission | None = None
) -> Iterator[pa.Table]:
    """The manifest parts that hold requests to submit (of ``kind``; None: both), filtered to
    those requests. The index says which rows; only those parts' bodies are read."""
    columns = ["custom_id", "params_hash", "request_bytes", "params_json"]
    with open_index(layout, job.retry_policy()) as index:
        for part, rows, custom_ids in index.pending_rows(kind):
            table = layout.read_table("manifest", part, columns=columns)
            chunk = table.take(pa.array(rows, pa.int64()))
            # The index is derived: a row of it pointing at another request must never be paid for.
            if chunk.column("custom_id").to_pylist() != custom_ids:
                raise RunError(
                    f"the request index at {index_path(layout)} disagrees with manifest {part}:"
                    " delete that file and run again (it is rebuilt from the ledger)"
                )
            yield chunk


def count_pending(layout: OutputLayout, job: JobConfig, kind: Submission | None = None) -> int:
    """How many manifest requests are still to be submitted (of ``kind``; None: both)."""
    with open_index(layout, job.retry_policy()) as index:
        return index.count_pending(kind)


def any_pending(layout: OutputLayout, job: JobConfig, kind: Submission | None = None) -> bool:
    """Whether any manifest request is still to be submitted (of ``kind``; None: both)."""
    with open_index(layout, job.retry_policy()) as index:
        return index.any_pending(kind)


def _pending_chunks(
    layout: OutputLayout, job: JobConfig, kind: Submission | None
) -> Iterator[pa.Table]:
    """Pending requests, streamed part by part and cut into batch-sized tables."""
    carry: pa.Table | None = None
    for part in pending_parts(layout, job, kind):
        table = pa.concat_tables([carry, part]) if carry is not None else part
        ranges = split_batches(
            table.column("request_bytes").to_pylist(),
            job.max_requests_per_batch,
            job.max_batch_bytes,
        )
        # Every range but the last is full; the last may still grow with the next part.
        for full in ranges[:-1]:
            yield table.slice(full.start, len(full))
        carry = table.slice(ranges[-1].start) if ranges else None
    if carry is not None and carry.num_rows:
        yield carry


def create_body(chunk: pa.Table) -> bytes:
    """The create request's JSON from the manifest's stored params, without parsing them."""
    items = [
        request_line(cid, params.encode())
        for cid, params in zip(
            chunk.column("custom_id").to_pylist(),
            chunk.column("params_json").to_pylist(),
            strict=True,
        )
    ]
    return b'{"requests":[' + b",".join(items) + b"]}"


def _refusal(entry: LedgerEntry, size: int, exc: anthropic.APIStatusError) -> str:
    """One line: which intent the API refused, and what to change when the answer says."""
    refused = f"the API refused batch intent {entry.key} ({counted(entry.request_count, 'request')}"
    if exc.status_code == 413:
        # Batches are cut under the documented 256 MB; an endpoint that counts less refuses them.
        return (
            f"{refused}, {size:,} bytes) as too large (413): run again with a smaller --batch-size"
        )
    return f"{refused}): {exc.status_code} {exc.message}"


def _ambiguous(status: int) -> bool:
    return status >= 500 or status in _AMBIGUOUS_STATUSES


def _retry_after(exc: anthropic.APIStatusError) -> float | None:
    try:
        return float(exc.response.headers.get("retry-after", ""))
    except ValueError:
        return None
