"""The Message Batches endpoints, independent of HTTP plumbing: inputs in, JSON or a stream out."""

from __future__ import annotations

import threading
import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, Final

from batchline.emulator import faults, models, seeding
from batchline.emulator.config import EmulatorConfig
from batchline.emulator.errors import ApiError, batch_not_found, invalid_request
from batchline.emulator.intake import ByteSource, iter_requests
from batchline.emulator.processor import Processor
from batchline.emulator.schedule import BatchRecord, instant
from batchline.emulator.store import Store

_INSERT_ROWS: Final = 2000
_DEFAULT_LIMIT: Final = 20
_MAX_LIMIT: Final = 1000


@dataclass(frozen=True, slots=True)
class ResultsBody:
    """A results download: its full length, its chunks, and where to cut it short (if at all)."""

    length: int
    chunks: Generator[bytes, None, None]
    cut_at: int | None


class BatchesApi:
    """Implements each endpoint on top of the store; raises `ApiError` for error answers."""

    def __init__(self, store: Store, processor: Processor, config: EmulatorConfig) -> None:
        self._store = store
        self._processor = processor
        self._config = config
        # Known once the server is bound; results_url is built from it.
        self.base_url = ""
        # Fault budgets count from this start, not over the database's life.
        self._budget_lock = threading.Lock()
        self._creates_to_lose = config.lose_creates
        self._downloads_to_cut = config.cut_results
        self._outage_pending = config.results_outage_seconds > 0
        self._outage_ends = 0.0

    def count_create_call(self) -> None:
        """Record a create POST, whatever happens to it next."""
        self._store.bump("create_calls")

    def http_fault(self) -> ApiError | None:
        """Draw whether this /v1 call fails before doing anything."""
        call_number = self._store.bump("http_calls")
        fault = (
            faults.outage()
            if time.monotonic() < self._outage_ends
            else faults.http_fault(self._config, call_number)
        )
        if fault is not None:
            self._store.bump("http_faults")
        return fault

    def create(self, body: ByteSource) -> dict[str, Any]:
        """POST /v1/messages/batches: store requests as they are decoded, then publish."""
        batch_id = seeding.object_id(
            "msgbatch", self._config.seed, self._store.bump("batch_id_sequence")
        )
        seq = self._store.reserve_batch(batch_id)
        try:
            count = self._receive(seq, batch_id, body)
        except BaseException:
            self._store.discard_batch(seq)
            raise
        now = instant(time.time())
        record = self._store.publish_batch(
            seq,
            request_count=count,
            created_at=now,
            expires_at=instant(now + self._config.expiry_seconds),
            processing_seconds=self._config.processing_seconds,
            requests_per_second=self._config.requests_per_second,
            cancel_seconds=self._config.cancel_seconds,
        )
        self._processor.wake()
        with self._budget_lock:
            lose = self._creates_to_lose > 0
            self._creates_to_lose -= lose
        if lose:
            raise ApiError(500, "api_error", "Internal server error")
        return self._view(record)

    def _receive(self, seq: int, batch_id: str, body: ByteSource) -> int:
        rows: list[tuple[int, str, int, bytes]] = []
        count = 0
        for request in iter_requests(body):
            order = seeding.sort_key(
                self._config.seed, "results-order", batch_id, request.custom_id
            )
            rows.append((request.index, request.custom_id, order, request.raw))
            count += 1
            if len(rows) >= _INSERT_ROWS:
                self._store.add_requests(seq, rows)
                rows.clear()
        self._store.add_requests(seq, rows)
        return count

    def retrieve(self, batch_id: str) -> dict[str, Any]:
        """GET /v1/messages/batches/{id}."""
        return self._view(self._get(batch_id))

    def list_batches(self, query: dict[str, list[str]]) -> dict[str, Any]:
        """GET /v1/messages/batches: newest first, with after_id / before_id cursors."""
        limit = _limit(query.get("limit"))
        after_id = _single(query, "after_id")
        before_id = _single(query, "before_id")
        if after_id is not None and before_id is not None:
            raise invalid_request("Only one of after_id and before_id may be given.")
        after = self._cursor("after_id", after_id)
        before = self._cursor("before_id", before_id)
        records, has_more = self._store.page(limit=limit, after=after, before=before)
        data = [self._view(record) for record in records]
        return {
            "data": data,
            "has_more": has_more,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }

    def cancel(self, batch_id: str) -> dict[str, Any]:
        """POST /v1/messages/batches/{id}/cancel."""
        if self._get(batch_id).status == "ended":
            raise invalid_request(
                f"Message Batch {batch_id} has already ended and can no longer be canceled."
            )
        record = self._store.cancel(batch_id, instant(time.time()))
        if record is None:
            raise batch_not_found(batch_id)
        self._processor.wake()
        return self._view(record)

    def delete(self, batch_id: str) -> dict[str, Any]:
        """DELETE /v1/messages/batches/{id}: only once the batch has ended."""
        record = self._get(batch_id)
        if record.status != "ended":
            raise invalid_request(
                "In progress batches cannot be deleted. Consider canceling the batch instead."
            )
        self._store.delete(record.seq)
        return {"id": batch_id, "type": "message_batch_deleted"}

    def results(self, batch_id: str) -> ResultsBody:
        """GET /v1/messages/batches/{id}/results: the JSONL file, streamed from the store."""
        record = self._get(batch_id)
        if record.status != "ended" or record.archived(
            time.time(), self._config.results_retention_seconds
        ):
            raise ApiError(
                404, "not_found_error", f"Message Batch {batch_id} has no available results."
            )
        with self._budget_lock:
            outage, self._outage_pending = self._outage_pending, False
            if outage:
                self._outage_ends = time.monotonic() + self._config.results_outage_seconds
        if outage:
            self._store.bump("http_faults")
            raise faults.outage()
        self._store.bump("results_downloads")
        with self._budget_lock:
            cut = self._downloads_to_cut > 0
            self._downloads_to_cut -= cut
        return ResultsBody(
            length=record.results_bytes,
            chunks=self._store.result_lines(record.seq),
            cut_at=record.results_bytes // 2 if cut else None,
        )

    def stats(self, query: dict[str, list[str]]) -> dict[str, Any]:
        """GET /_emulator/stats; `?per_custom_id=0` leaves out the per-custom_id map."""
        return self._store.stats(
            per_custom_id=_single(query, "per_custom_id") not in ("0", "false")
        )

    def list_models(self, query: dict[str, list[str]]) -> dict[str, Any]:
        """GET /v1/models: newest first; retired models only when `lifecycle` asks for them."""
        wanted = set(query.get("lifecycle[]", []) + query.get("lifecycle", [])) or {
            "active",
            "deprecated",
        }
        listed = sorted(
            (m for m in self._config.models if m.lifecycle in wanted),
            key=lambda m: m.created_at,
            reverse=True,
        )
        ids = [m.id for m in listed]
        start, end = 0, len(listed)
        if (after_id := _single(query, "after_id")) is not None:
            start = ids.index(after_id) + 1 if after_id in ids else end
        if (before_id := _single(query, "before_id")) is not None:
            end = ids.index(before_id) if before_id in ids else 0
        limit = _limit(query.get("limit"))
        page = listed[start:end][:limit]
        data = [m.info() for m in page]
        return {
            "data": data,
            "has_more": start + len(page) < end,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }

    def retrieve_model(self, model_id: str) -> dict[str, Any]:
        """GET /v1/models/{id}: by id or alias, retired ones included (they stay on record)."""
        model = models.find(self._config.models, model_id)
        if model is None:
            raise ApiError(404, "not_found_error", f"model: {model_id}")
        return model.info()

    def _get(self, batch_id: str) -> BatchRecord:
        record = self._store.get(batch_id)
        if record is None:
            raise batch_not_found(batch_id)
        return record

    def _cursor(self, name: str, batch_id: str | None) -> int | None:
        if batch_id is None:
            return None
        position = self._store.position(batch_id)
        if position is None:
            raise invalid_request(f"{name}: Message Batch {batch_id} not found.")
        return position

    def _view(self, record: BatchRecord) -> dict[str, Any]:
        return record.to_json(
            now=time.time(),
            base_url=self.base_url,
            retention_seconds=self._config.results_retention_seconds,
        )


def _single(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


def _limit(values: list[str] | None) -> int:
    if not values:
        return _DEFAULT_LIMIT
    try:
        limit = int(values[-1])
    except ValueError:
        raise invalid_request("limit: Input should be a valid integer") from None
    if limit < 1:
        raise invalid_request("limit: Input should be greater than or equal to 1")
    if limit > _MAX_LIMIT:
        raise invalid_request(f"limit: Input should be less than or equal to {_MAX_LIMIT}")
    return limit
