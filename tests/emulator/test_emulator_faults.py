"""Injected faults: errored and expired requests, HTTP errors, lost creates, cut downloads."""

from __future__ import annotations

import time
from collections import Counter

import anthropic
import httpx2
import pytest


def test_error_rate_of_one_errors_every_request_with_that_type(
    emulator_factory, client, make_requests, wait_ended
) -> None:
    emu = emulator_factory(error_rates={"overloaded_error": 1.0})
    batches = client(emu).messages.batches
    batch = batches.create(requests=make_requests(5))

    ended = wait_ended(batches, batch.id)

    assert ended.request_counts.errored == 5
    for result in batches.results(batch.id):
        assert result.result.type == "errored"
        assert result.result.error.type == "error"
        assert result.result.error.error.type == "overloaded_error"


def test_mixed_rates_split_requests_by_type_reproducibly(
    emulator_factory, client, make_requests, wait_ended
) -> None:
    settings = {
        "seed": 3,
        "error_rates": {"api_error": 0.2, "rate_limit_error": 0.2},
        "expire_rate": 0.2,
    }
    outcomes = []
    for _ in range(2):
        emu = emulator_factory(**settings)
        batches = client(emu).messages.batches
        batch = batches.create(requests=make_requests(200))
        ended = wait_ended(batches, batch.id)
        kinds = Counter(
            r.result.error.error.type if r.result.type == "errored" else r.result.type
            for r in batches.results(batch.id)
        )
        outcomes.append((batch.id, kinds))
        counts = ended.request_counts
        assert counts.errored == kinds["api_error"] + kinds["rate_limit_error"]
        assert counts.expired == kinds["expired"] and counts.succeeded == kinds["succeeded"]

    (first_id, first), (second_id, second) = outcomes
    assert first_id == second_id and first == second
    for kind in ("api_error", "rate_limit_error", "expired", "succeeded"):
        assert 20 <= first[kind] <= 70, first


def test_a_failed_request_can_succeed_when_resubmitted_in_a_new_batch(
    emulator_factory, client, make_requests, wait_ended
) -> None:
    emu = emulator_factory(seed=11, error_rates={"overloaded_error": 0.5})
    batches = client(emu).messages.batches
    first = batches.create(requests=make_requests(40))
    wait_ended(batches, first.id)
    failed = {r.custom_id for r in batches.results(first.id) if r.result.type == "errored"}
    retry = [r for r in make_requests(40) if r["custom_id"] in failed]

    second = batches.create(requests=retry)
    wait_ended(batches, second.id)

    recovered = {r.custom_id for r in batches.results(second.id) if r.result.type == "succeeded"}
    assert failed and recovered
    assert recovered < failed


@pytest.mark.parametrize(
    ("status", "error_class", "error_type"),
    [
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (500, anthropic.InternalServerError, "api_error"),
        (529, anthropic.OverloadedError, "overloaded_error"),
    ],
)
def test_http_faults_reach_a_client_that_does_not_retry(
    emulator_factory, client, make_requests, status, error_class, error_type
) -> None:
    emu = emulator_factory(http_error_rates={status: 1.0}, retry_after_seconds=7)
    batches = client(emu, max_retries=0).messages.batches

    with pytest.raises(error_class) as caught:
        batches.create(requests=make_requests(2))

    assert caught.value.status_code == status
    assert caught.value.body["error"]["type"] == error_type
    assert (caught.value.response.headers.get("retry-after") == "7") == (status == 429)
    stats = emu.stats()
    # The fault comes before any side effect: the POST was counted, no batch was made.
    assert (stats["create_calls"], stats["batches_created"], stats["http_faults"]) == (1, 0, 1)


def test_the_sdk_retries_through_http_faults(
    emulator_factory, client, make_requests, wait_ended
) -> None:
    emu = emulator_factory(
        seed=5, http_error_rates={429: 0.2, 500: 0.1, 529: 0.1}, retry_after_seconds=0.001
    )
    batches = client(emu, max_retries=10).messages.batches

    batch = batches.create(requests=make_requests(3))
    wait_ended(batches, batch.id)
    results = list(batches.results(batch.id))
    listed = list(batches.list())

    assert len(results) == 3 and [b.id for b in listed] == [batch.id]
    stats = emu.stats(per_custom_id=False)
    assert stats["http_faults"] >= 1
    assert stats["batches_created"] == 1


def test_http_faults_are_a_function_of_seed_and_call_number(emulator_factory) -> None:
    def fault_pattern() -> list[int]:
        emu = emulator_factory(seed=9, http_error_rates={500: 0.5})
        url = f"{emu.base_url}/v1/messages/batches"
        headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
        return [httpx2.get(url, headers=headers).status_code for _ in range(12)]

    first, second = fault_pattern(), fault_pattern()

    assert first == second
    assert set(first) == {200, 500}


def test_a_lost_create_makes_a_retrying_client_create_twice(
    emulator_factory, client, make_requests
) -> None:
    emu = emulator_factory(lose_creates=1)
    batches = client(emu, max_retries=2).messages.batches

    batch = batches.create(requests=make_requests(3))

    listed = [b.id for b in batches.list()]
    assert listed[0] == batch.id and len(listed) == 2
    stats = emu.stats()
    assert (stats["create_calls"], stats["batches_created"]) == (2, 2)
    assert stats["requests_per_custom_id"]["req-0"] == 2


def test_a_lost_create_without_retries_raises_but_the_batch_exists(
    emulator_factory, client, make_requests
) -> None:
    emu = emulator_factory(lose_creates=1)
    batches = client(emu, max_retries=0).messages.batches

    with pytest.raises(anthropic.InternalServerError):
        batches.create(requests=make_requests(3))

    assert len(list(batches.list())) == 1
    assert batches.create(requests=make_requests(1)).processing_status == "in_progress"


def test_a_cut_download_breaks_the_sdk_iteration_then_the_next_one_is_whole(
    emulator_factory, client, make_requests, wait_ended
) -> None:
    emu = emulator_factory(cut_results=1)
    batches = client(emu).messages.batches
    batch = batches.create(requests=make_requests(30))
    wait_ended(batches, batch.id)

    received = []
    with pytest.raises(httpx2.RemoteProtocolError, match="complete message body"):
        for result in batches.results(batch.id):
            received.append(result.custom_id)
    whole = [result.custom_id for result in batches.results(batch.id)]

    assert 0 < len(received) < 30
    assert len(whole) == 30 and whole[: len(received)] == received
    assert emu.stats(per_custom_id=False)["results_downloads"] == 2


def test_a_results_outage_answers_every_call_500_until_it_ends(
    emulator_factory, client, make_requests, wait_ended
) -> None:
    emu = emulator_factory(results_outage_seconds=1.0)
    batches = client(emu, max_retries=0).messages.batches
    batch = batches.create(requests=make_requests(3))
    wait_ended(batches, batch.id)

    with pytest.raises(anthropic.InternalServerError):
        list(batches.results(batch.id))
    with pytest.raises(anthropic.InternalServerError):
        batches.retrieve(batch.id)
    time.sleep(1.1)

    assert len(list(batches.results(batch.id))) == 3
    stats = emu.stats(per_custom_id=False)
    assert (stats["http_faults"], stats["results_downloads"]) == (2, 1)
