from __future__ import annotations

import pytest

from batchline.ledger import RequestState
from batchline.retry import is_retryable, needs_submission


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
    assert needs_submission(None, "h1", 3)
    assert needs_submission(failed, "h1", 3)
    assert not needs_submission(failed, "h1", 2)
    # changed params: a new request, whatever happened to the old one
    done = RequestState("h1", attempts=1, batch_id="b", status="succeeded")
    assert not needs_submission(done, "h1", 3)
    assert needs_submission(done, "h2", 3)
    in_flight = RequestState("h1", attempts=1, batch_id="b")
    assert not needs_submission(in_flight, "h1", 3)
