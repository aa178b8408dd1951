"""The one place that decides whether something is worth trying again: a request, an API call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import anthropic
import httpx2

from batchline.config import RetryPolicy

# Error types of an errored result that a later attempt can cure. invalid_request_error (and any
# type not listed, such as authentication or permission errors) would fail the same way again.
RETRYABLE_ERROR_TYPES = frozenset(
    {"overloaded_error", "api_error", "rate_limit_error", "timeout_error"}
)


DEFAULT_POLICY = RetryPolicy()


def is_retryable(
    status: str | None, error_type: str | None, policy: RetryPolicy = DEFAULT_POLICY
) -> bool:
    """Whether a request that ended with this outcome can succeed if submitted again."""
    match status:
        case "expired":
            return True
        case "invalid_output":
            return policy.retry_invalid_output
        case "canceled":
            return policy.retry_canceled
        case "errored":
            return error_type in RETRYABLE_ERROR_TYPES
        case "succeeded" | "invalid" | None:
            # None: still in flight.
            return False
        case _:
            raise ValueError(f"unknown result status {status!r}")


Submission = Literal["new", "retry"]


@dataclass
class RequestState:
    """What the ledger and the collected results say about one custom_id."""

    params_hash: str
    attempts: int
    batch_id: str | None
    status: str | None = None  # None until the latest batch's results are collected
    error_type: str | None = None


def submission_kind(
    state: RequestState | None, params_hash: str, policy: RetryPolicy = DEFAULT_POLICY
) -> Submission | None:
    """Whether a manifest request goes into a next batch: as a new request, a retry, or not."""
    if state is None or state.params_hash != params_hash:
        return "new"
    if state.attempts < policy.max_attempts and is_retryable(
        state.status, state.error_type, policy
    ):
        return "retry"
    return None


def needs_submission(
    state: RequestState | None, params_hash: str, policy: RetryPolicy = DEFAULT_POLICY
) -> bool:
    """Whether a manifest request should go into the next batch, as new or as a retry."""
    return submission_kind(state, params_hash, policy) is not None


def is_transient_api_failure(error: BaseException) -> bool:
    """Whether an API call that failed with ``error`` (after the SDK's own retries) can succeed
    later: a connection error, a results download cut off, a 5xx or a 429. A 4xx other than 429
    would fail the same way again, and a ConfigError or RunError is an answer, not an outage."""
    match error:
        case anthropic.APIConnectionError() | anthropic.RateLimitError() | httpx2.TransportError():
            return True
        case anthropic.APIStatusError():
            return error.status_code >= 500
        case _:
            return False
