from __future__ import annotations

import anthropic
import httpx2
import pytest

from batchline.config import ConfigError, RetryPolicy, RunError
from batchline.ledger import RequestState
from batchline.retry import is_retryable, is_transient_api_failure, needs_submission


@pytest.mark.parametrize(
    ("status", "error_type", "expected"),
    [
        ("succeeded", None, False),
        ("expired", None, True),
        ("canceled", None, False),
        ("errored", "overloaded_error", True),
        ("errored", "api_error", True),
        ("errored", "rate_limit_error", True),
        ("errored", "timeout_error", True),
        ("errored", "invalid_request_error", False),
        ("errored", "authentication_error", False),
        (None, None, False),
    ],
)
def test_only_transient_outcomes_are_retryable(
    status: str | None, error_type: str | None, expected: bool
) -> None:
    assert is_retryable(status, error_type) is expected


def test_unknown_status_is_an_error_not_a_silent_skip() -> None:
    with pytest.raises(ValueError, match="unknown result status"):
        is_retryable("exploded", None)


def test_needs_submission_counts_attempts_per_params() -> None:
    failed = RequestState("h1", attempts=2, batch_id="b", status="errored", error_type="api_error")
    assert needs_submission(None, "h1")
    assert needs_submission(failed, "h1", RetryPolicy(max_attempts=3))
    assert not needs_submission(failed, "h1", RetryPolicy(max_attempts=2))
    # changed params: a new request, whatever happened to the old one
    done = RequestState("h1", attempts=1, batch_id="b", status="succeeded")
    assert not needs_submission(done, "h1")
    assert needs_submission(done, "h2")
    in_flight = RequestState("h1", attempts=1, batch_id="b")
    assert not needs_submission(in_flight, "h1")


def test_canceled_requests_are_resubmitted_only_when_asked_and_within_the_attempts() -> None:
    canceled = RequestState("h", attempts=1, batch_id="b", status="canceled")
    assert not needs_submission(canceled, "h")
    assert needs_submission(canceled, "h", RetryPolicy(retry_canceled=True))
    assert not needs_submission(canceled, "h", RetryPolicy(max_attempts=1, retry_canceled=True))


def _status_error(status: int) -> anthropic.APIStatusError:
    request = httpx2.Request("GET", "https://api.anthropic.com/v1/messages/batches/b")
    response = httpx2.Response(status, request=request)
    # The SDK's own mapping from status to class, as a failed call would raise it.
    return anthropic.Anthropic(api_key="k")._make_status_error(
        "emulated", body=None, response=response
    )


@pytest.mark.parametrize(
    ("status", "expected"),
    [(429, True), (500, True), (503, True), (529, True), (400, False), (404, False)],
)
def test_api_failures_worth_another_try_are_5xx_and_429(status: int, expected: bool) -> None:
    assert is_transient_api_failure(_status_error(status)) is expected


def test_connection_failures_are_transient_and_answers_are_not() -> None:
    request = httpx2.Request("GET", "https://api.anthropic.com/v1/messages/batches/b")
    assert is_transient_api_failure(anthropic.APIConnectionError(request=request))
    assert is_transient_api_failure(anthropic.APITimeoutError(request=request))
    assert is_transient_api_failure(httpx2.RemoteProtocolError("peer closed connection"))
    assert not is_transient_api_failure(ConfigError("no API key"))
    assert not is_transient_api_failure(RunError("results past their retention"))
    assert not is_transient_api_failure(ValueError("a bug"))
