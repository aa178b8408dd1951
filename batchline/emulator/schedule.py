"""A batch's timeline: when each request is processed, when the batch ends, how it looks then.

Request i of a batch is processed at `created_at + processing_seconds` (all at once), or at
`created_at + (i + 1) / requests_per_second` when a rate is set. Processing stops at the cutoff:
the moment cancellation was initiated or the batch expired, whichever came first. Requests not
processed by then end `canceled` (after a cancel) or `expired`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

Status = Literal["in_progress", "canceling", "ended"]

_TOLERANCE: Final = 1e-6


@dataclass(frozen=True, slots=True)
class RequestCounts:
    """Tallies of the outcomes, known once a batch has ended."""

    succeeded: int = 0
    errored: int = 0
    canceled: int = 0
    expired: int = 0


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """A batch as stored, with the timing settings it was created under."""

    seq: int
    id: str
    request_count: int
    created_at: float
    expires_at: float
    processing_seconds: float
    requests_per_second: float | None
    cancel_seconds: float
    cancel_initiated_at: float | None
    ended_at: float | None
    generated: int
    generated_at: float | None
    counts: RequestCounts
    results_bytes: int

    @property
    def status(self) -> Status:
        """The processing status the API reports."""
        if self.ended_at is not None:
            return "ended"
        return "canceling" if self.cancel_initiated_at is not None else "in_progress"

    @property
    def cutoff(self) -> float:
        """When processing stops: cancellation or expiry, whichever is first."""
        if self.cancel_initiated_at is None:
            return self.expires_at
        return min(self.cancel_initiated_at, self.expires_at)

    def processed_count(self) -> int:
        """How many requests (a prefix in request order) are processed before the cutoff."""
        # Times are stored to the microsecond; the tolerance keeps a request due exactly at the
        # cutoff from being lost to float rounding.
        elapsed = self.cutoff - self.created_at + _TOLERANCE
        if self.requests_per_second is None:
            return self.request_count if self.processing_seconds <= elapsed else 0
        reached = math.floor(elapsed * self.requests_per_second)
        return max(0, min(self.request_count, reached))

    def natural_end(self) -> float:
        """When the batch would end if nothing stopped it."""
        if self.requests_per_second is None:
            return self.created_at + self.processing_seconds
        return self.created_at + self.request_count / self.requests_per_second

    def scheduled_end(self) -> float:
        """When the batch ends: naturally, on expiry, or cancel_seconds after a cancel."""
        end = min(self.natural_end(), self.expires_at)
        if self.cancel_initiated_at is not None:
            end = min(end, self.cancel_initiated_at + self.cancel_seconds)
        return end

    def unprocessed_outcome(self) -> Literal["canceled", "expired"]:
        """What the requests left unprocessed at the cutoff become."""
        if self.cancel_initiated_at is not None and self.cancel_initiated_at < self.expires_at:
            return "canceled"
        return "expired"

    def to_json(self, *, now: float, base_url: str, retention_seconds: float) -> dict[str, Any]:
        """The MessageBatch object the API returns."""
        ended = self.ended_at is not None
        counts = self.counts
        archived_at: float | None = None
        if self.ended_at is not None and now >= self.created_at + retention_seconds:
            archived_at = max(self.ended_at, self.created_at + retention_seconds)
        return {
            "id": self.id,
            "type": "message_batch",
            "processing_status": self.status,
            "request_counts": {
                "processing": 0 if ended else self.request_count,
                "succeeded": counts.succeeded,
                "errored": counts.errored,
                "canceled": counts.canceled,
                "expired": counts.expired,
            },
            "ended_at": rfc3339(self.ended_at),
            "created_at": rfc3339(self.created_at),
            "expires_at": rfc3339(self.expires_at),
            "archived_at": rfc3339(archived_at),
            "cancel_initiated_at": rfc3339(self.cancel_initiated_at),
            "results_url": f"{base_url}/v1/messages/batches/{self.id}/results" if ended else None,
        }

    def archived(self, now: float, retention_seconds: float) -> bool:
        """Whether the results have been archived and can no longer be downloaded."""
        return now >= self.created_at + retention_seconds


def instant(timestamp: float) -> float:
    """A time rounded to the microsecond, the API's resolution, so that stored times and their
    RFC 3339 form agree exactly (an `ended_at - created_at` is what was configured)."""
    return round(timestamp, 6)


def rfc3339(timestamp: float | None) -> str | None:
    """UTC time as the API writes it, e.g. 2024-08-20T18:37:24.100435Z."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
