"""The one place that decides whether something is worth trying again: a request, an API call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import anthropic
import httpx2

# Error types of an errored result that a later attempt can cure. invalid_request_error (and any
# type not listed, such as authentication or permission errors) would fail the same way again.
RETRYABLE_ERROR_TYPES = frozenset(
    {"overloaded_error", "api_error", "rate_limit_error", "timeout_error"}
)


def is_retryable(
    status: str | None, error_type: str | None, retry_invalid_output: bool = False
) -> bool:
    """Whether a request that ended with this outcome can succeed if submitted again.

    A reply that did not parse or match the output schema (``invalid_output``) was paid for and
    may fail again the same way, so it is resubmitted only when the run asks for it.
    """
    match status:
        case "expired":
            return True
        case "invalid_output":
            return retry_invalid_output
        case "errored":
            return error_type in RETRYABLE_ERROR_TYPES
        case "succeeded" | "canceled" | "invalid" | None:
            # canceled: someone stopped the batch on purpose; None: still in flight.
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
    state: RequestState | None,
    params_hash: str,
    max_attempts: int,
    retry_invalid_output: bool = False,
) -> Submission | None:
    """Whether a manifest request goes into a next batch: as a new request, a retry, or not."""
    if state is None or state.params_hash != params_hash:
        return "new"
    if state.attempts < max_attempts and is_retryable(
        state.status, state.error_type, retry_invalid_output
    ):
        return "retry"
    return None


def needs_submission(
    state: RequestState | None,
    params_hash: str,
    max_attempts: int,
    retry_invalid_output: bool = False,
) -> bool:
    """Whether a manifest request should go into the next batch, as new or as a retry."""
    return submission_kind(state, params_hash, max_attempts, retry_invalid_output) is not None


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
