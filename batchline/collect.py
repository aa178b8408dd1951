"""Download a batch's results into one Parquet file keyed by batch id, in bounded memory.

Results are streamed as raw JSONL through the SDK's streaming response (so auth, base URL and
retries stay the SDK's) and parsed with orjson, rather than building a pydantic object per line.
Re-collecting a batch rewrites the same file, so a rerun never appends duplicates.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import anthropic
import httpx2
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel

from batchline import schemas
from batchline.config import RunError
from batchline.failpoints import failpoint
from batchline.ledger import Ledger
from batchline.storage import OutputLayout
from batchline.structured import ReplyValidator
from batchline.wording import counted

log = logging.getLogger(__name__)

ROWS_PER_GROUP = 10_000
MAX_DOWNLOAD_ATTEMPTS = 5
# The SDK wraps errors of the request itself, but a body cut off while we stream it surfaces as
# the transport's own error.
_BROKEN_DOWNLOAD = (
    anthropic.APIConnectionError,
    anthropic.InternalServerError,
    httpx2.TransportError,
)


class CollectError(RunError):
    """A batch's results do not match the requests the ledger says it holds."""


class ForeignResultsError(CollectError):
    """A batch's results answer requests other than those its ledger entry lists."""


class ResultsExpiredError(CollectError):
    """Results the API no longer keeps (29 days after creation): their requests are unanswered."""


class CollectedBatch(BaseModel):
    batch_id: str
    rows: int
    by_status: dict[str, int]
    rejected: bool = False  # adopted in error: its results answered another job's requests


def parse_result_line(line: bytes | str, batch_id: str) -> dict[str, Any]:
    """One results JSONL line as a row of ``schemas.COLLECTED``."""
    record = orjson.loads(line)
    result = record["result"]
    row: dict[str, Any] = {
        "custom_id": record["custom_id"],
        "batch_id": batch_id,
        "status": result["type"],
    }
    match result["type"]:
        case "succeeded":
            message = result["message"]
            content = message.get("content") or []
            tool_uses = [
                {"id": b.get("id"), "name": b.get("name"), "input": b.get("input")}
                for b in content
                if b.get("type") == "tool_use"
            ]
            usage = message.get("usage") or {}
            cache_creation = usage.get("cache_creation") or {}
            row |= {
                "text": "".join(b.get("text", "") for b in content if b.get("type") == "text"),
                "tool_use_json": orjson.dumps(tool_uses).decode() if tool_uses else None,
                "model": message.get("model"),
                "stop_reason": message.get("stop_reason"),
                "input_tokens": usage.get("input_tokens"),
                "output_tokens": usage.get("output_tokens"),
                "cache_creation_input_tokens": usage.get("cache_creation_input_tokens") or 0,
                "cache_read_input_tokens": usage.get("cache_read_input_tokens") or 0,
                "cache_creation_1h_input_tokens": cache_creation.get("ephemeral_1h_input_tokens")
                or 0,
            }
        case "errored":
            error = (result.get("error") or {}).get("error") or {}
            row |= {"error_type": error.get("type"), "error_message": error.get("message")}
        case "canceled" | "expired":
            pass
        case other:
            raise CollectError(f"batch {batch_id}: unknown result type {other!r}")
    return row


def iter_result_lines(client: anthropic.Anthropic, batch_id: str) -> Iterator[bytes]:
    """The raw JSONL lines of an ended batch's results, streamed."""
    with client.messages.batches.with_streaming_response.results(batch_id) as response:
        pending = b""
        for chunk in response.iter_bytes(1 << 20):
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            yield from (line for line in lines if line.strip())
        if pending.strip():
            yield pending


def collect_batch(
    client: anthropic.Anthropic,
    layout: OutputLayout,
    batch_id: str,
    expected_custom_ids: set[str],
    sleep: Callable[[float], None] = time.sleep,
    output_schema: dict[str, Any] | None = None,
) -> CollectedBatch:
    """Write ``collected/<batch_id>.parquet`` unless it is there already; summarise it.

    With ``output_schema``, a succeeded reply that does not parse or match it is recorded as
    ``invalid_output`` (see batchline/structured.py).
    """
    name = f"{batch_id}.parquet"
    if not layout.exists("collected", name):
        for attempt in range(1, MAX_DOWNLOAD_ATTEMPTS + 1):
            try:
                lines = iter_result_lines(client, batch_id)
                write_collected(layout, batch_id, lines, expected_custom_ids, output_schema)
                break
            except anthropic.NotFoundError as exc:
                if client.messages.batches.retrieve(batch_id).archived_at is None:
                    raise
                raise _results_expired(client, layout) from exc
            except _BROKEN_DOWNLOAD as exc:
                # A stream cut midway: the partial file was discarded, start the download over.
                if attempt == MAX_DOWNLOAD_ATTEMPTS:
                    raise
                log.warning("results of %s broke off (%s); downloading again", batch_id, exc)
                sleep(min(2.0**attempt, 30.0))
        failpoint("collect.done")
    statuses = layout.read_table("collected", name, columns=["status"]).column("status")
    by_status = Counter(statuses.to_pylist())
    return CollectedBatch(batch_id=batch_id, rows=sum(by_status.values()), by_status=by_status)


def collect_entry(
    client: anthropic.Anthropic,
    layout: OutputLayout,
    batch_id: str,
    sleep: Callable[[float], None] = time.sleep,
    output_schema: dict[str, Any] | None = None,
) -> CollectedBatch:
    """Collect a batch the ledger holds, checking each result against the entry's requests.

    An adopted batch (found after a lost create response) is only a guess until its results
    arrive: one whose custom_ids are not the intent's belongs to someone else. Its adoption is
    undone, nothing of it is kept, and the next submit finds the intent's own batch or makes one.
    """
    ledger = Ledger(layout)
    entry = ledger.entry_for(batch_id)
    expected = set(ledger.request_ids(entry).column("custom_id").to_pylist())
    try:
        return collect_batch(client, layout, batch_id, expected, sleep, output_schema)
    except ForeignResultsError as exc:
        if not entry.adopted:
            raise
        ledger.reject_adoption(entry)
        log.warning(
            "batch %s, adopted for intent %s after a lost create response, is not ours (%s): "
            "adoption undone; its requests will go to the intent's own batch or a new one",
            batch_id,
            entry.key,
            exc,
        )
        return CollectedBatch(batch_id=batch_id, rows=0, by_status={}, rejected=True)


def write_collected(
    layout: OutputLayout,
    batch_id: str,
    lines: Iterable[bytes],
    expected: set[str],
    output_schema: dict[str, Any] | None = None,
) -> None:
    """Write ``collected/<batch_id>.parquet`` from result lines, which must answer ``expected``.

    The file appears whole or not at all, so a crash or a cut stream never leaves a partial one.
    """
    validator = ReplyValidator(output_schema) if output_schema is not None else None
    seen: set[str] = set()
    with (
        layout.atomic_open("collected", f"{batch_id}.parquet") as handle,
        pq.ParquetWriter(handle, schemas.COLLECTED, compression="zstd") as writer,
    ):
        rows: list[dict[str, Any]] = []
        for line in lines:
            row = parse_result_line(line, batch_id)
            if row["custom_id"] not in expected or row["custom_id"] in seen:
                raise ForeignResultsError(
                    f"batch {batch_id} returned custom_id {row['custom_id']!r}, which the ledger "
                    "does not list for it (or twice): was the wrong batch adopted?"
                )
            seen.add(row["custom_id"])
            if validator is not None:
                validator.check(row)
            rows.append(row)
            if len(rows) >= ROWS_PER_GROUP:
                writer.write_table(pa.Table.from_pylist(rows, schema=schemas.COLLECTED))
                rows = []
        if rows:
            writer.write_table(pa.Table.from_pylist(rows, schema=schemas.COLLECTED))
        failpoint("collect.written")
        if seen != expected:
            raise ForeignResultsError(
                f"batch {batch_id} returned {counted(len(seen), 'result')} for "
                f"{counted(len(expected), 'request')}"
            )


def _results_expired(client: anthropic.Anthropic, layout: OutputLayout) -> ResultsExpiredError:
    """The error naming every uncollected batch whose results the API has archived."""
    gone = []
    for entry in Ledger(layout).entries():
        if entry.batch_id is None or layout.exists("collected", f"{entry.batch_id}.parquet"):
            continue
        if client.messages.batches.retrieve(entry.batch_id).archived_at is not None:
            gone.append(entry)
    listed = ", ".join(f"{e.batch_id} ({counted(e.request_count, 'request')})" for e in gone)
    return ResultsExpiredError(
        f"the results of {counted(len(gone), 'batch')} are past the API's 29-day retention and "
        f"can no longer be downloaded: {listed}; "
        f"{counted(sum(e.request_count for e in gone), 'request')} have no "
        "result. To submit them again (and pay again), delete these ledger entries and rerun: "
        + ", ".join(layout.url("ledger", f"{e.key}.json") for e in gone)
    )
