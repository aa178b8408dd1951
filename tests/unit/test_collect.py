from __future__ import annotations

import orjson
import pytest

from batchline.collect import CollectError, parse_result_line


def _line(result: dict[str, object]) -> bytes:
    return orjson.dumps({"custom_id": "c1", "result": result})


def test_succeeded_line_keeps_text_tool_use_and_usage() -> None:
    message = {
        "model": "claude-haiku-4-5",
        "stop_reason": "tool_use",
        "content": [
            {"type": "text", "text": "Hello "},
            {"type": "text", "text": "world"},
            {"type": "tool_use", "id": "t1", "name": "extract", "input": {"k": 1}},
        ],
        "usage": {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 3},
    }
    row = parse_result_line(_line({"type": "succeeded", "message": message}), "b1")
    assert row["text"] == "Hello world"
    assert orjson.loads(row["tool_use_json"]) == [
        {"id": "t1", "name": "extract", "input": {"k": 1}}
    ]
    assert (row["input_tokens"], row["output_tokens"]) == (10, 5)
    assert (row["cache_read_input_tokens"], row["cache_creation_input_tokens"]) == (3, 0)
    assert row["batch_id"] == "b1"


def test_one_hour_cache_writes_are_kept_apart_when_the_usage_reports_them() -> None:
    usage = {
        "input_tokens": 1,
        "output_tokens": 1,
        "cache_creation_input_tokens": 700,
        "cache_creation": {"ephemeral_5m_input_tokens": 200, "ephemeral_1h_input_tokens": 500},
    }
    message = {"model": "claude-haiku-4-5", "content": [], "usage": usage}
    row = parse_result_line(_line({"type": "succeeded", "message": message}), "b1")
    assert (row["cache_creation_input_tokens"], row["cache_creation_1h_input_tokens"]) == (700, 500)
    del usage["cache_creation"]  # older answers: every write is a 5-minute one
    row = parse_result_line(_line({"type": "succeeded", "message": message}), "b1")
    assert row["cache_creation_1h_input_tokens"] == 0


def test_errored_line_keeps_the_error_type_and_message() -> None:
    error = {"type": "error", "error": {"type": "invalid_request_error", "message": "bad model"}}
    row = parse_result_line(_line({"type": "errored", "error": error}), "b1")
    assert (row["status"], row["error_type"], row["error_message"]) == (
        "errored",
        "invalid_request_error",
        "bad model",
    )


def test_unknown_result_type_fails_loudly() -> None:
    with pytest.raises(CollectError, match="unknown result type 'weird'"):
        parse_result_line(_line({"type": "weird"}), "b1")
