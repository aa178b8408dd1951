"""The background worker: works out each request's result and ends batches when they are due.

Results are computed soon after a batch is created, in small chunks so that API calls interleave,
but only published when the batch ends; until then the batch reports every request as
`processing`, as the real API does.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Final

import orjson

from batchline.emulator import faults, responder, seeding
from batchline.emulator.config import EmulatorConfig
from batchline.emulator.schedule import BatchRecord, instant
from batchline.emulator.store import Outcome, Store

logger = logging.getLogger(__name__)

_CHUNK: Final = 500
_IDLE_WAIT: Final = 1.0


def errored_result(error_type: str, message: str) -> dict[str, Any]:
    """An `errored` result, with the error envelope the API puts in batch results."""
    return {
        "type": "errored",
        "error": {
            "type": "error",
            "error": {
                "details": {"error_visibility": "user_facing"},
                "type": error_type,
                "message": message,
            },
            "request_id": None,
        },
    }


class Processor:
    """Thread that generates outcomes and finishes due batches."""

    def __init__(self, store: Store, config: EmulatorConfig) -> None:
        self._store = store
        self._config = config
        self._cache = responder.PromptCache(store.prompt_cache(time.time()))
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="emulator-processor", daemon=True)

    def start(self) -> None:
        """Start working in the background."""
        self._thread.start()

    def stop(self) -> None:
        """Finish the current step and stop."""
        self._stopping.set()
        self._wake.set()
        self._thread.join()

    def wake(self) -> None:
        """Look at the batches again now (after a create or a cancel)."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                wait = self.step()
            except Exception:
                # A bug here must not kill the thread and freeze every batch; log and go on.
                logger.exception("emulator processor step failed")
                wait = _IDLE_WAIT
            if wait > 0:
                self._wake.wait(wait)

    def step(self) -> float:
        """Do one piece of work; returns how long nothing is due (0 if there is more to do)."""
        wait = _IDLE_WAIT
        for record in self._store.unfinished():
            now = time.time()
            target = record.processed_count()
            if record.generated < target:
                self._generate(record, target, now)
                return 0.0
            due = record.scheduled_end()
            if now < due:
                wait = min(wait, due - now)
                continue
            # Never before the results were ready, nor before a cancel that came in late.
            ended_at = instant(
                max(
                    due,
                    record.generated_at or record.created_at,
                    record.cancel_initiated_at or record.created_at,
                )
            )
            # If a cancel slipped in since the read, finish() refuses and the next step sees it.
            self._store.finish(
                record,
                ended_at=ended_at,
                processed=target,
                unprocessed=record.unprocessed_outcome(),
            )
            return 0.0
        return wait

    def _generate(self, record: BatchRecord, target: int, now: float) -> None:
        limit = min(_CHUNK, target - record.generated)
        outcomes: list[Outcome] = []
        for index, custom_id, raw in self._store.pending_requests(
            record.seq, record.generated, limit
        ):
            try:
                kind, result = self._outcome(record, custom_id, raw, now)
            except Exception:
                # One request the emulator cannot handle must not stall its whole batch; the
                # real API answers such a request with an internal error too.
                logger.exception("emulator failed on request %s of %s", custom_id, record.id)
                kind, result = "errored", errored_result("api_error", "Internal server error")
            line = orjson.dumps({"custom_id": custom_id, "result": result}) + b"\n"
            outcomes.append((index, kind, line))
        generated = record.generated + len(outcomes)
        self._store.save_outcomes(
            record.seq,
            outcomes,
            generated=generated,
            generated_at=time.time() if generated >= target else None,
            cache_changes=self._cache.take_changes(),
        )

    def _outcome(
        self, record: BatchRecord, custom_id: str, raw: bytes, now: float
    ) -> tuple[str, dict[str, Any]]:
        """The result type and result of one processed request."""
        params = orjson.loads(raw)["params"]
        try:
            prepared = responder.check(params, self._config)
        except responder.InvalidParams as invalid:
            return "errored", errored_result(invalid.error_type, invalid.message)
        match faults.request_fault(self._config, record.id, custom_id):
            case None:
                message = responder.render(
                    prepared,
                    message_id=seeding.object_id("msg", self._config.seed, record.id, custom_id),
                    tool_use_id=seeding.object_id("toolu", self._config.seed, record.id, custom_id),
                    cache=self._cache,
                    cache_min_tokens=self._config.cache_min_tokens,
                    now=now,
                    output_fault=faults.output_fault(self._config, record.id, custom_id),
                )
                return "succeeded", {"type": "succeeded", "message": message}
            case "expired":
                return "expired", {"type": "expired"}
            case error_type:
                return "errored", errored_result(
                    error_type, faults.request_error_message(error_type)
                )
