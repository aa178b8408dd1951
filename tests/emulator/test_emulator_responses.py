"""The emulated model's answers: deterministic text, usage, prompt caching, tools, beta routes."""

from __future__ import annotations

import math
from typing import Any

import httpx2
import pytest


def _run(batches: Any, wait_ended: Any, requests: list[dict[str, Any]]) -> dict[str, Any]:
    """Create a batch, wait for it and return its results by custom_id."""
    batch = batches.create(requests=requests)
    wait_ended(batches, batch.id)
    return {result.custom_id: result.result for result in batches.results(batch.id)}


def _request(custom_id: str, **params: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": "claude-haiku-4-5",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": "Summarise the attached document, please."}],
    }
    base.update(params)
    return {"custom_id": custom_id, "params": base}


def test_a_succeeded_message_has_the_full_shape(emulator_factory, client, wait_ended) -> None:
    emu = emulator_factory()
    results = _run(client(emu).messages.batches, wait_ended, [_request("one")])

    result = results["one"]
    assert result.type == "succeeded"
    message = result.message
    assert message.id.startswith("msg_") and message.type == "message"
    assert message.role == "assistant" and message.model == "claude-haiku-4-5"
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert [block.type for block in message.content] == ["text"]
    usage = message.usage
    assert usage.service_tier == "batch"
    assert usage.input_tokens == math.ceil(len("Summarise the attached document, please.") / 4)
    assert usage.output_tokens == math.ceil(len(message.content[0].text) / 4)
    assert (usage.cache_creation_input_tokens, usage.cache_read_input_tokens) == (0, 0)


def test_same_params_give_the_same_text_and_quote_the_document(
    emulator_factory, client, wait_ended
) -> None:
    emu = emulator_factory()
    batches = client(emu).messages.batches
    document = "The quarterly report of the Lighthouse Keepers' Guild, volume " + "IX " * 40
    other = "A completely different document about tides."
    requests = [
        _request("a", messages=[{"role": "user", "content": document}]),
        _request("b", messages=[{"role": "user", "content": other}]),
    ]

    first = _run(batches, wait_ended, requests)
    second = _run(batches, wait_ended, requests)

    text_a = first["a"].message.content[0].text
    assert text_a == second["a"].message.content[0].text
    assert first["a"].message.id != second["a"].message.id
    assert document[:64] in text_a and document[:65] not in text_a
    assert other in first["b"].message.content[0].text
    assert text_a != first["b"].message.content[0].text


def test_the_quote_comes_from_the_last_user_message(emulator_factory, client, wait_ended) -> None:
    emu = emulator_factory()
    conversation = [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": [{"type": "text", "text": "second question"}]},
    ]

    results = _run(client(emu).messages.batches, wait_ended, [_request("c", messages=conversation)])

    text = results["c"].message.content[0].text
    assert "second question" in text and "first question" not in text


def test_small_max_tokens_truncates_the_reply(emulator_factory, client, wait_ended) -> None:
    emu = emulator_factory()

    results = _run(client(emu).messages.batches, wait_ended, [_request("t", max_tokens=3)])

    message = results["t"].message
    assert message.stop_reason == "max_tokens"
    assert len(message.content[0].text) == 12
    assert message.usage.output_tokens == 3


def test_a_stop_sequence_in_the_reply_stops_it(emulator_factory, client, wait_ended) -> None:
    emu = emulator_factory()

    results = _run(
        client(emu).messages.batches, wait_ended, [_request("s", stop_sequences=["document"])]
    )

    message = results["s"].message
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == "document"
    assert message.content[0].text == "Emulated reply to: Summarise the attached "


def _cached_system(text: str, **marker: Any) -> list[dict[str, Any]]:
    return [{"type": "text", "text": text, "cache_control": {"type": "ephemeral", **marker}}]


def test_a_cached_system_prompt_is_written_once_then_read(
    emulator_factory, client, wait_ended
) -> None:
    emu = emulator_factory()
    batches = client(emu).messages.batches
    system = "You are a careful analyst. " * 200  # 5,400 characters: 1,350 tokens
    prefix_tokens = math.ceil(len(system) / 4)
    requests = [_request(f"c{i}", system=_cached_system(system)) for i in range(3)]

    first = _run(batches, wait_ended, requests)
    later = _run(batches, wait_ended, [_request("later", system=_cached_system(system))])

    usages = [first[f"c{i}"].message.usage for i in range(3)]
    assert usages[0].cache_creation_input_tokens == prefix_tokens
    assert usages[0].cache_read_input_tokens == 0
    assert usages[0].cache_creation.ephemeral_5m_input_tokens == prefix_tokens
    for usage in [*usages[1:], later["later"].message.usage]:
        assert (usage.cache_creation_input_tokens, usage.cache_read_input_tokens) == (
            0,
            prefix_tokens,
        )
        assert usage.input_tokens == usages[0].input_tokens


def test_the_cache_is_keyed_by_model_and_prefix(emulator_factory, client, wait_ended) -> None:
    emu = emulator_factory()
    system = "Reference material. " * 300
    requests = [
        _request("haiku", system=_cached_system(system)),
        _request("sonnet", model="claude-sonnet-4-5", system=_cached_system(system)),
        _request("other", system=_cached_system(system + "Appendix.")),
        _request("hour", system=_cached_system("Hour long. " * 500, ttl="1h")),
    ]

    results = _run(client(emu).messages.batches, wait_ended, requests)

    for custom_id in ("haiku", "sonnet", "other", "hour"):
        usage = results[custom_id].message.usage
        assert usage.cache_read_input_tokens == 0 and usage.cache_creation_input_tokens > 0
    assert results["hour"].message.usage.cache_creation.ephemeral_1h_input_tokens > 0


def test_a_prefix_shorter_than_the_minimum_is_not_cached(
    emulator_factory, client, wait_ended
) -> None:
    emu = emulator_factory()
    system = _cached_system("Too short to cache.")
    requests = [_request("x", system=system), _request("y", system=system)]

    results = _run(client(emu).messages.batches, wait_ended, requests)

    for custom_id in ("x", "y"):
        usage = results[custom_id].message.usage
        assert (usage.cache_creation_input_tokens, usage.cache_read_input_tokens) == (0, 0)


def test_a_forced_tool_answers_with_tool_use(emulator_factory, client, wait_ended) -> None:
    emu = emulator_factory()
    tool = {
        "name": "record_summary",
        "description": "Store a summary.",
        "input_schema": {
            "type": "object",
            "properties": {
                "title": {"type": "string"},
                "pages": {"type": "integer"},
                "score": {"type": "number"},
                "final": {"type": "boolean"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "kind": {"type": "string", "enum": ["memo", "report"]},
                "meta": {
                    "type": "object",
                    "properties": {"lang": {"type": "string"}},
                    "required": ["lang"],
                },
                "optional": {"type": "string"},
            },
            "required": ["title", "pages", "score", "final", "tags", "kind", "meta"],
        },
    }
    requests = [
        _request("named", tools=[tool], tool_choice={"type": "tool", "name": "record_summary"}),
        _request("any", tools=[tool], tool_choice={"type": "any"}),
        _request("auto", tools=[tool], tool_choice={"type": "auto"}),
    ]

    results = _run(client(emu).messages.batches, wait_ended, requests)

    for custom_id in ("named", "any"):
        message = results[custom_id].message
        assert message.stop_reason == "tool_use"
        (block,) = message.content
        assert block.type == "tool_use" and block.name == "record_summary"
        assert block.id.startswith("toolu_")
        assert block.input == {
            "title": "emulated",
            "pages": 0,
            "score": 0.0,
            "final": False,
            "tags": [],
            "kind": "memo",
            "meta": {"lang": "emulated"},
        }
    assert results["auto"].message.content[0].type == "text"


def test_forcing_an_unknown_tool_is_an_errored_request(
    emulator_factory, client, wait_ended
) -> None:
    emu = emulator_factory()
    tool = {"name": "a", "input_schema": {"type": "object"}}

    results = _run(
        client(emu).messages.batches,
        wait_ended,
        [_request("bad", tools=[tool], tool_choice={"type": "tool", "name": "b"})],
    )

    assert results["bad"].type == "errored"
    assert "tool_choice" in results["bad"].error.error.message


def test_thinking_adds_a_thinking_block(emulator_factory, client, wait_ended) -> None:
    emu = emulator_factory()
    requests = [
        _request("think", max_tokens=4096, thinking={"type": "enabled", "budget_tokens": 2048}),
        _request("low", max_tokens=4096, thinking={"type": "enabled", "budget_tokens": 10}),
    ]

    results = _run(client(emu).messages.batches, wait_ended, requests)

    assert [b.type for b in results["think"].message.content] == ["thinking", "text"]
    assert results["low"].type == "errored"


@pytest.mark.parametrize("betas", [["message-batches-2024-09-24"], None])
def test_beta_routes_serve_the_same_batches(
    emulator_factory, client, make_requests, wait_ended, betas
) -> None:
    emu = emulator_factory(processing_seconds=0.3)
    beta = client(emu).beta.messages.batches
    extra = {"betas": betas} if betas else {}

    created = beta.create(requests=make_requests(3), **extra)
    canceled_one = beta.create(requests=make_requests(1), **extra)
    beta.cancel(canceled_one.id, **extra)
    listed = [batch.id for batch in beta.list(limit=1, **extra)]
    ended = wait_ended(beta, created.id)
    results = list(beta.results(created.id, **extra))
    deleted = beta.delete(created.id, **extra)

    assert created.processing_status == "in_progress"
    assert listed == [canceled_one.id, created.id]
    assert ended.request_counts.succeeded == 3
    assert sorted(r.custom_id for r in results) == ["req-0", "req-1", "req-2"]
    assert deleted.type == "message_batch_deleted"
    assert client(emu).messages.batches.retrieve(canceled_one.id).cancel_initiated_at


def test_beta_query_flag_is_accepted_on_every_route(emulator_factory, make_requests) -> None:
    emu = emulator_factory(processing_seconds=0.05)
    headers = {
        "x-api-key": "k",
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "message-batches-2024-09-24",
    }
    root = f"{emu.base_url}/v1/messages/batches"

    created = httpx2.post(f"{root}?beta=true", json={"requests": make_requests(1)}, headers=headers)
    batch_id = created.json()["id"]
    listed = httpx2.get(f"{root}?beta=true&limit=5", headers=headers)
    retrieved = httpx2.get(f"{root}/{batch_id}?beta=true", headers=headers)

    assert created.status_code == listed.status_code == retrieved.status_code == 200
    assert [batch["id"] for batch in listed.json()["data"]] == [batch_id]
    assert retrieved.json()["id"] == batch_id
