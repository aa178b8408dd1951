"""Batch lifecycle through the official SDK: create, poll, list, cancel, delete, restart."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import anthropic
import httpx2
import pytest

from batchline.emulator import Emulator, EmulatorConfig

AUTH = {"x-api-key": "test-key", "anthropic-version": "2023-06-01"}


def test_create_then_retrieve_until_ended(
    emulator_factory, client, make_requests, wait_ended
) -> None:
    emu = emulator_factory(processing_seconds=0.3, expiry_seconds=3600)
    batches = client(emu).messages.batches

    created = batches.create(requests=make_requests(7))

    assert created.id.startswith("msgbatch_") and len(created.id) == len("msgbatch_") + 24
    assert created.type == "message_batch"
    assert created.processing_status == "in_progress"
    assert created.results_url is None and created.ended_at is None
    assert created.expires_at - created.created_at == timedelta(seconds=3600)
    in_progress = batches.retrieve(created.id)
    counts = in_progress.request_counts
    assert (counts.processing, counts.succeeded, counts.errored) == (7, 0, 0)
    assert (counts.canceled, counts.expired) == (0, 0)

    ended = wait_ended(batches, created.id)

    assert ended.request_counts.processing == 0
    assert ended.request_counts.succeeded == 7
    assert ended.ended_at is not None
    assert ended.ended_at - ended.created_at >= timedelta(seconds=0.3)
    assert ended.results_url == f"{emu.base_url}/v1/messages/batches/{created.id}/results"
    assert ended.archived_at is None and ended.cancel_initiated_at is None


def test_results_cover_every_request_out_of_request_order(
    emulator_factory, client, make_requests, wait_ended
) -> None:
    emu = emulator_factory()
    batches = client(emu).messages.batches
    requests = make_requests(20)
    batch = batches.create(requests=requests)
    wait_ended(batches, batch.id)

    results = list(batches.results(batch.id))

    sent_order = [request["custom_id"] for request in requests]
    got_order = [result.custom_id for result in results]
    assert sorted(got_order) == sorted(sent_order)
    assert got_order != sent_order
    assert {result.result.type for result in results} == {"succeeded"}


def test_results_jsonl_is_newline_terminated_without_blank_lines(
    emulator_factory, client, make_requests, wait_ended
) -> None:
    emu = emulator_factory()
    sdk = client(emu)
    batch = sdk.messages.batches.create(requests=make_requests(5))
    ended = wait_ended(sdk.messages.batches, batch.id)

    raw = httpx2.get(ended.results_url, headers=AUTH)

    assert raw.status_code == 200
    assert raw.headers["content-type"] == "application/x-jsonl"
    assert int(raw.headers["content-length"]) == len(raw.content)
    assert raw.content.endswith(b"\n")
    assert raw.content.count(b"\n") == 5
    assert b"\n\n" not in raw.content


def test_list_walks_every_page_newest_first(emulator_factory, client, make_requests) -> None:
    emu = emulator_factory()
    batches = client(emu).messages.batches
    ids = [batches.create(requests=make_requests(1, prefix=f"b{n}")).id for n in range(5)]

    first_page = batches.list(limit=2)
    walked = [batch.id for batch in batches.list(limit=2)]

    assert [batch.id for batch in first_page.data] == ids[::-1][:2]
    assert first_page.has_more is True
    assert first_page.first_id == ids[4] and first_page.last_id == ids[3]
    assert walked == ids[::-1]


def test_list_cursors(emulator_factory, client, make_requests) -> None:
    emu = emulator_factory()
    batches = client(emu).messages.batches
    ids = [batches.create(requests=make_requests(1, prefix=f"b{n}")).id for n in range(5)]

    after = batches.list(after_id=ids[3], limit=2)
    before = batches.list(before_id=ids[1], limit=2)
    last = batches.list(after_id=ids[1])
    walked_back = [batch.id for batch in batches.list(before_id=ids[0], limit=1)]

    assert [b.id for b in after.data] == [ids[2], ids[1]] and after.has_more is True
    assert [b.id for b in before.data] == [ids[3], ids[2]] and before.has_more is True
    assert [b.id for b in last.data] == [ids[0]] and last.has_more is False
    # Auto-pagination with before_id walks towards the newest batch, one page at a time.
    assert walked_back == [ids[1], ids[2], ids[3], ids[4]]


@pytest.mark.parametrize("limit", [0, 1001])
def test_list_limit_out_of_range_is_rejected(emulator_factory, client, limit) -> None:
    emu = emulator_factory()

    with pytest.raises(anthropic.BadRequestError) as caught:
        client(emu).messages.batches.list(limit=limit)

    assert caught.value.body["error"]["type"] == "invalid_request_error"
    assert "limit" in caught.value.body["error"]["message"]


def test_cancel_moves_to_canceling_then_ended_with_canceled_results(
    emulator_factory, client, make_requests, wait_ended
) -> None:
    emu = emulator_factory(processing_seconds=5, cancel_seconds=0.2)
    batches = client(emu).messages.batches
    batch = batches.create(requests=make_requests(4))

    canceling = batches.cancel(batch.id)

    assert canceling.processing_status == "canceling"
    assert canceling.cancel_initiated_at is not None
    assert canceling.request_counts.processing == 4
    assert batches.cancel(batch.id).cancel_initiated_at == canceling.cancel_initiated_at
    ended = wait_ended(batches, batch.id)
    assert ended.request_counts.canceled == 4 and ended.request_counts.processing == 0
    assert ended.ended_at - canceling.cancel_initiated_at >= timedelta(seconds=0.2)
    assert [r.result.type for r in batches.results(batch.id)] == ["canceled"] * 4


def test_cancel_of_an_ended_batch_is_rejected(
    emulator_factory, client, make_requests, wait_ended
) -> None:
    emu = emulator_factory()
    batches = client(emu).messages.batches
    batch = batches.create(requests=make_requests(1))
    wait_ended(batches, batch.id)

    with pytest.raises(anthropic.BadRequestError) as caught:
        batches.cancel(batch.id)

    assert caught.value.body["error"]["type"] == "invalid_request_error"


def test_cancel_with_a_rate_keeps_what_was_processed(
    emulator_factory, client, make_requests, wait_ended
) -> None:
    emu = emulator_factory(requests_per_second=20, cancel_seconds=0.05)
    batches = client(emu).messages.batches
    batch = batches.create(requests=make_requests(100))
    time.sleep(0.3)

    batches.cancel(batch.id)
    ended = wait_ended(batches, batch.id)

    counts = ended.request_counts
    assert 1 <= counts.succeeded < 100
    assert counts.succeeded + counts.canceled == 100
    types = {r.custom_id: r.result.type for r in batches.results(batch.id)}
    processed = {f"req-{i}" for i in range(counts.succeeded)}
    assert {cid for cid, kind in types.items() if kind == "succeeded"} == processed


def test_rate_and_short_expiry_expire_the_unprocessed_tail(
    emulator_factory, client, make_requests, wait_ended
) -> None:
    emu = emulator_factory(requests_per_second=20, expiry_seconds=0.25)
    batches = client(emu).messages.batches
    batch = batches.create(requests=make_requests(10))

    ended = wait_ended(batches, batch.id)

    assert (ended.request_counts.succeeded, ended.request_counts.expired) == (5, 5)
    assert ended.ended_at == ended.expires_at
    results = {r.custom_id: r.result.type for r in batches.results(batch.id)}
    assert results == {f"req-{i}": "succeeded" if i < 5 else "expired" for i in range(10)}


def test_delete_needs_an_ended_batch(emulator_factory, client, make_requests, wait_ended) -> None:
    emu = emulator_factory(processing_seconds=0.3)
    batches = client(emu).messages.batches
    batch = batches.create(requests=make_requests(2))

    with pytest.raises(anthropic.BadRequestError) as in_progress:
        batches.delete(batch.id)
    wait_ended(batches, batch.id)
    deleted = batches.delete(batch.id)

    assert "cannot be deleted" in in_progress.value.body["error"]["message"]
    assert (deleted.id, deleted.type) == (batch.id, "message_batch_deleted")
    with pytest.raises(anthropic.NotFoundError):
        batches.retrieve(batch.id)
    assert [b.id for b in batches.list()] == []


def test_unknown_batch_is_404_everywhere(emulator_factory, client) -> None:
    emu = emulator_factory()
    batches = client(emu).messages.batches
    missing = "msgbatch_01NoSuchBatchAtAllHere00"

    calls = [batches.retrieve, batches.cancel, batches.delete]
    for call in calls:
        with pytest.raises(anthropic.NotFoundError) as caught:
            call(missing)
        assert caught.value.body["error"] == {
            "type": "not_found_error",
            "message": f"Message Batch {missing} not found.",
        }


def test_results_before_the_end_are_404(emulator_factory, client, make_requests) -> None:
    emu = emulator_factory(processing_seconds=5)
    sdk = client(emu)
    batch = sdk.messages.batches.create(requests=make_requests(1))

    response = httpx2.get(f"{emu.base_url}/v1/messages/batches/{batch.id}/results", headers=AUTH)

    assert response.status_code == 404
    assert response.json()["error"]["message"].endswith("has no available results.")
    with pytest.raises(anthropic.AnthropicError, match="No `results_url`"):
        sdk.messages.batches.results(batch.id)


def test_archived_batches_keep_their_record_but_not_their_results(
    emulator_factory, client, make_requests, wait_ended
) -> None:
    emu = emulator_factory(results_retention_seconds=0.5)
    batches = client(emu).messages.batches
    batch = batches.create(requests=make_requests(1))
    wait_ended(batches, batch.id)
    time.sleep(0.5)

    archived = batches.retrieve(batch.id)

    assert archived.archived_at is not None
    assert archived.archived_at - archived.created_at >= timedelta(seconds=0.5)
    with pytest.raises(anthropic.NotFoundError):
        list(batches.results(batch.id))


def test_state_survives_a_restart_on_the_same_database(
    tmp_path: Path, client, make_requests, wait_ended
) -> None:
    config = EmulatorConfig(processing_seconds=0.1, db_path=str(tmp_path / "state.sqlite"))
    with Emulator(config) as first:
        batches = client(first).messages.batches
        old = batches.create(requests=make_requests(3))
        wait_ended(batches, old.id)
        old_text = {r.custom_id: r.result for r in batches.results(old.id)}

    with Emulator(config) as second:
        batches = client(second).messages.batches
        found = batches.retrieve(old.id)
        new = batches.create(requests=make_requests(3))
        again = {r.custom_id: r.result for r in batches.results(old.id)}
        stats = second.stats()
        base_url = second.base_url

    assert found.processing_status == "ended" and found.request_counts.succeeded == 3
    assert found.results_url == f"{base_url}/v1/messages/batches/{old.id}/results"
    assert again == old_text
    assert new.id != old.id
    assert stats["batches_created"] == 2
    assert stats["requests_per_custom_id"]["req-0"] == 2
    assert stats["results_downloads"] == 2


def test_a_batch_created_before_a_stop_ends_after_the_restart(
    tmp_path: Path, client, make_requests, wait_ended
) -> None:
    emu = Emulator(EmulatorConfig(processing_seconds=0.3, db_path=str(tmp_path / "db")))
    emu.start()
    batch = client(emu).messages.batches.create(requests=make_requests(2))
    port = emu.port
    emu.stop()
    time.sleep(0.3)
    emu.start()
    try:
        ended = wait_ended(client(emu).messages.batches, batch.id)
    finally:
        emu.stop()

    assert emu.port == port
    assert ended.request_counts.succeeded == 2


def test_stop_closes_idle_client_connections_promptly(
    emulator_factory, client, make_requests
) -> None:
    emu = emulator_factory()
    sdk = client(emu, max_retries=0)
    sdk.messages.batches.create(requests=make_requests(1))  # leaves a pooled keep-alive connection

    started = time.monotonic()
    emu.stop()
    stopped_in = time.monotonic() - started

    assert stopped_in < 2
    with pytest.raises(anthropic.APIConnectionError):
        sdk.messages.batches.list()


def test_a_batch_that_outlives_its_expiry_expires_whole(
    emulator_factory, client, make_requests, wait_ended
) -> None:
    emu = emulator_factory(processing_seconds=5, expiry_seconds=0.2)
    batches = client(emu).messages.batches
    batch = batches.create(requests=make_requests(3))

    ended = wait_ended(batches, batch.id)

    assert ended.request_counts.expired == 3
    assert ended.ended_at == ended.expires_at


def test_stats_endpoint_needs_no_key_and_is_never_faulted(
    emulator_factory, client, make_requests
) -> None:
    emu = emulator_factory(http_error_rates={500: 1.0})
    with pytest.raises(anthropic.InternalServerError):
        client(emu, max_retries=1).messages.batches.create(requests=make_requests(2))

    full = httpx2.get(f"{emu.base_url}/_emulator/stats")
    short = httpx2.get(f"{emu.base_url}/_emulator/stats?per_custom_id=0")

    assert full.status_code == short.status_code == 200
    assert full.json() == emu.stats()
    assert full.json()["create_calls"] == 2 and full.json()["http_faults"] == 2
    assert short.json() == {
        key: value for key, value in full.json().items() if key != "requests_per_custom_id"
    }
