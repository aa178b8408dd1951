"""Structured outputs through the SDK: replies that match output_config.format, and their faults."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import jsonschema
import pytest

from batchline.emulator.cli import _parser, config_from_args

# Everything the pipeline maps to a column, made API-ready the way batchline sends it.
SCHEMA = anthropic.transform_schema(
    {
        "type": "object",
        "properties": {
            "title": {"type": "string"},
            "pages": {"type": "integer"},
            "score": {"type": "number"},
            "draft": {"type": "boolean"},
            "kind": {"type": "string", "enum": ["memo", "letter", "report", "note"]},
            "tags": {"type": "array", "items": {"type": "string"}},
            "author": {"$ref": "#/$defs/Author"},
            "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        },
        "required": ["title", "pages", "score", "draft", "kind", "tags", "author"],
        "$defs": {
            "Author": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
                "required": ["name"],
            }
        },
    }
)


def _requests(count: int, prefix: str = "s", max_tokens: int = 1024) -> list[dict[str, Any]]:
    return [
        {
            "custom_id": f"{prefix}-{i}",
            "params": {
                "model": "claude-haiku-4-5",
                "max_tokens": max_tokens,
                "messages": [{"role": "user", "content": f"Classify document {i}."}],
                "output_config": {"format": {"type": "json_schema", "schema": SCHEMA}},
            },
        }
        for i in range(count)
    ]


def _run(batches: Any, wait_ended: Any, requests: list[dict[str, Any]]) -> dict[str, Any]:
    batch = batches.create(requests=requests)
    wait_ended(batches, batch.id)
    return {r.custom_id: r.result for r in batches.results(batch.id)}


def test_replies_are_deterministic_json_that_matches_the_schema(
    emulator_factory, client, wait_ended
) -> None:
    batches = client(emulator_factory()).messages.batches
    results = _run(batches, wait_ended, _requests(40))
    again = _run(batches, wait_ended, _requests(40))

    replies = {}
    for custom_id, result in results.items():
        message = result.message
        assert message.stop_reason == "end_turn"
        [block] = message.content
        replies[custom_id] = json.loads(block.text)
        jsonschema.validate(replies[custom_id], SCHEMA)
        assert again[custom_id].message.content[0].text == block.text  # same request, same reply
    values = list(replies.values())
    # The choices vary from request to request, within the schema's bounds.
    assert {v["kind"] for v in values} == {"memo", "letter", "report", "note"}
    assert {v["draft"] for v in values} == {True, False}
    assert len({v["pages"] for v in values}) > 10
    assert {len(v["tags"]) for v in values} == {0, 1, 2, 3}  # up to 3 items unless minItems
    assert any("age" in v["author"] for v in values) and any(
        "age" not in v["author"] for v in values
    )
    assert any("note" in v for v in values) and any("note" not in v for v in values)


def test_output_faults_truncate_or_mismatch_and_resubmission_draws_again(
    emulator_factory, client, wait_ended
) -> None:
    emu = emulator_factory(seed=7, output_fault_rates={"truncated": 0.25, "mismatched": 0.25})
    batches = client(emu).messages.batches
    requests = _requests(60)
    results = _run(batches, wait_ended, requests)

    kinds: dict[str, str] = {}
    for custom_id, result in results.items():
        assert result.type == "succeeded"  # a spoiled reply is still a paid, succeeded message
        message = result.message
        text = message.content[0].text
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            assert message.stop_reason == "max_tokens"
            assert message.usage.output_tokens == 1024
            kinds[custom_id] = "truncated"
            continue
        try:
            jsonschema.validate(value, SCHEMA)
            kinds[custom_id] = "fine"
        except jsonschema.ValidationError as exc:
            assert list(exc.absolute_path)[:1] == ["title"]  # the first field has the wrong type
            kinds[custom_id] = "mismatched"
    counts = {k: list(kinds.values()).count(k) for k in ("truncated", "mismatched", "fine")}
    assert all(10 <= n <= 40 for n in counts.values()), counts

    spoiled = [r for r in requests if kinds[r["custom_id"]] != "fine"]
    redone = _run(batches, wait_ended, spoiled)
    fixed = sum(
        1
        for result in redone.values()
        if result.message.stop_reason == "end_turn"
        and not list(
            jsonschema.Draft202012Validator(SCHEMA).iter_errors(
                json.loads(result.message.content[0].text)
            )
        )
    )
    assert fixed > len(spoiled) / 3  # a new batch is a new draw


def test_a_reply_longer_than_max_tokens_is_cut_there(emulator_factory, client, wait_ended) -> None:
    batches = client(emulator_factory()).messages.batches
    [result] = _run(batches, wait_ended, _requests(1, max_tokens=5)).values()
    assert result.message.stop_reason == "max_tokens"
    assert len(result.message.content[0].text) == 20
    with pytest.raises(json.JSONDecodeError):
        json.loads(result.message.content[0].text)


@pytest.mark.parametrize(
    ("output_config", "message"),
    [
        ({"format": {"type": "xml"}}, "output_config.format.type"),
        ({"format": {"type": "json_schema", "schema": "x"}}, "output_config.format.schema"),
        ("json", "output_config: Input should be a valid dictionary"),
    ],
)
def test_a_bad_output_config_is_an_invalid_request(
    emulator_factory, client, wait_ended, output_config: object, message: str
) -> None:
    batches = client(emulator_factory()).messages.batches
    [request] = _requests(1)
    request["params"]["output_config"] = output_config
    [result] = _run(batches, wait_ended, [request]).values()
    assert result.type == "errored"
    assert result.error.error.type == "invalid_request_error"
    assert message in result.error.error.message


def test_the_cli_option_sets_the_output_fault_rates() -> None:
    args = _parser().parse_args(
        ["--output-fault-rate", "truncated=0.1", "--output-fault-rate", "mismatched=0.2"]
    )
    assert config_from_args(args).output_fault_rates == {"truncated": 0.1, "mismatched": 0.2}
    with pytest.raises(ValueError, match="output_fault_rates"):
        config_from_args(_parser().parse_args(["--output-fault-rate", "garbled=0.1"]))


def test_bounds_the_schema_carries_are_kept(emulator_factory, client, wait_ended) -> None:
    # transform_schema moves such bounds into descriptions; a schema sent as is keeps them.
    bounded = {
        "type": "object",
        "properties": {
            "urgency": {"type": "integer", "minimum": 1, "maximum": 5},
            "share": {"type": "number", "minimum": 0.5, "maximum": 1},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 2},
        },
        "required": ["urgency", "share", "tags"],
    }
    requests = _requests(30)
    for request in requests:
        request["params"]["output_config"]["format"]["schema"] = bounded
    results = _run(client(emulator_factory()).messages.batches, wait_ended, requests)
    replies = [json.loads(r.message.content[0].text) for r in results.values()]
    for reply in replies:
        jsonschema.validate(reply, bounded)
    assert {r["urgency"] for r in replies} == {1, 2, 3, 4, 5}
