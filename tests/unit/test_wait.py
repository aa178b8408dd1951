from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import anthropic
import pytest
from anthropic.types.messages import MessageBatch

from batchline.emulator import Emulator
from batchline.wait import LATENESS, next_delay, wait_for_batches
from tests.support import hello_params


def batch(age_seconds: float, status: str = "in_progress") -> MessageBatch:
    created = datetime.now(UTC) - timedelta(seconds=age_seconds)
    return MessageBatch.model_validate(
        {
            "id": f"msgbatch_{age_seconds:g}",
            "type": "message_batch",
            "processing_status": status,
            "created_at": created,
            "expires_at": created + timedelta(hours=24),
            "request_counts": {
                "processing": 1,
                "succeeded": 0,
                "errored": 0,
                "canceled": 0,
                "expired": 0,
            },
        }
    )


@pytest.mark.parametrize(
    ("age", "expected"),
    [
        (0, 10),  # a new batch: the first interval
        (100, 20),  # a fifth of its age
        (7200, 300),  # resumed hours later: the cap, not the first interval again
    ],
)
def test_the_wait_between_polls_is_a_fifth_of_the_batch_age(age: float, expected: float) -> None:
    assert next_delay({"b": batch(age)}, 10, 300) == pytest.approx(expected, rel=0.01)


def test_the_oldest_batch_still_processing_sets_the_pace() -> None:
    batches = {
        "new": batch(50),
        "old": batch(500),
        "ended long ago": batch(5000, status="ended"),
    }
    assert next_delay(batches, 10, 300) == pytest.approx(100, rel=0.01)


def test_a_clock_behind_the_apis_waits_the_first_interval() -> None:
    assert next_delay({"b": batch(-600)}, 10, 300) == 10


def test_a_real_wait_polls_at_the_first_interval_while_the_batch_is_young(
    emulator_factory: Callable[..., Emulator],
) -> None:
    """Against the emulator: no wait is longer than a fifth of the batch's age (plus a second
    of slack on created_at), where a backoff from the first interval would have grown."""
    emulator = emulator_factory(processing_seconds=2.5)
    client = anthropic.Anthropic(api_key="test-key", base_url=emulator.base_url)
    before_create = time.monotonic()
    created = client.messages.batches.create(
        requests=[{"custom_id": "r1", "params": hello_params()}]
    )
    slept: list[tuple[float, float]] = []

    def sleep(seconds: float) -> None:
        slept.append((time.monotonic() - before_create, seconds))
        time.sleep(seconds)

    batches = wait_for_batches(client, [created.id], 0.5, 300, sleep=sleep)
    assert batches[created.id].processing_status == "ended"
    assert len(slept) >= 3
    for waited, seconds in slept:
        assert 0.5 <= seconds <= max(0.5, LATENESS * (waited + 1.0)) + 1e-6, slept
