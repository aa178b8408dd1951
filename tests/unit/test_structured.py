"""The output schema: loading, the JSON Schema → Arrow mapping, and the check of each reply."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import anthropic
import pyarrow as pa
import pytest
from pydantic import BaseModel

from batchline.build import render_params
from batchline.config import ConfigError, JobConfig, RetryPolicy
from batchline.ledger import RequestState
from batchline.load import Document
from batchline.retry import is_retryable, needs_submission
from batchline.structured import (
    NOT_JSON,
    NOT_VALID,
    ReplyValidator,
    arrow_schema,
    load_output_schema,
    output_format,
    typed_columns,
)

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "pages": {"type": "integer", "minimum": 1},
        "score": {"type": "number"},
        "draft": {"type": "boolean"},
        "kind": {"type": "string", "enum": ["memo", "letter"]},
        "level": {"enum": [1, 2, 3]},
        "tags": {"type": "array", "items": {"type": "string"}},
        "author": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "age": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
            },
            "required": ["name"],
        },
        "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
    },
    "required": ["title", "pages", "kind"],
}

EXPECTED = pa.schema(
    [
        ("title", pa.string()),
        ("pages", pa.int64()),
        ("score", pa.float64()),
        ("draft", pa.bool_()),
        ("kind", pa.string()),
        ("level", pa.int64()),
        ("tags", pa.list_(pa.string())),
        ("author", pa.struct([("name", pa.string()), ("age", pa.int64())])),
        ("note", pa.string()),
    ]
)


class Mood(StrEnum):
    calm = "calm"
    upset = "upset"


class Sender(BaseModel):
    name: str
    vip: bool


class Ticket(BaseModel):
    category: Literal["billing", "bug"]
    mood: Mood
    urgency: int
    confidence: float
    labels: list[str]
    sender: Sender
    reply_by: str | None = None


def test_json_schema_fields_map_to_arrow_types() -> None:
    assert arrow_schema(SCHEMA) == EXPECTED


def test_a_pydantic_model_gives_typed_fields_through_refs_and_optionals() -> None:
    schema = load_output_schema(None, f"{__name__}:Ticket")
    assert schema == Ticket.model_json_schema()
    assert arrow_schema(schema) == pa.schema(
        [
            ("category", pa.string()),
            ("mood", pa.string()),
            ("urgency", pa.int64()),
            ("confidence", pa.float64()),
            ("labels", pa.list_(pa.string())),
            ("sender", pa.struct([("name", pa.string()), ("vip", pa.bool_())])),
            ("reply_by", pa.string()),
        ]
    )


def test_requests_carry_the_schema_made_api_ready_by_the_sdk() -> None:
    job = JobConfig(output_schema=SCHEMA)
    params = render_params(Document(doc_id="d", text="hello"), job)
    assert params["output_config"] == {
        "format": {"type": "json_schema", "schema": anthropic.transform_schema(SCHEMA)}
    }
    sent = params["output_config"]["format"]["schema"]
    assert sent["additionalProperties"] is False
    assert "minimum" not in sent["properties"]["pages"]  # moved into the description
    assert output_format(SCHEMA) is output_format(dict(SCHEMA))  # transformed once per schema


def test_the_schema_is_part_of_the_request_fingerprint() -> None:
    plain = JobConfig()
    assert JobConfig(output_schema=SCHEMA).request_fingerprint() != plain.request_fingerprint()
    other = {**SCHEMA, "required": ["title"]}
    assert (
        JobConfig(output_schema=other).request_fingerprint()
        != JobConfig(output_schema=SCHEMA).request_fingerprint()
    )
    # Fingerprints of runs without a schema are what they were before schemas existed.
    assert plain.request_fingerprint() == JobConfig(retry_invalid_output=True).request_fingerprint()


def test_a_field_named_like_a_results_column_is_refused_in_one_line() -> None:
    colliding = {"type": "object", "properties": {"status": {"type": "string"}}}
    with pytest.raises(ConfigError) as caught:
        load_output_schema(colliding, None)
    message = str(caught.value)
    assert "'status'" in message and "\n" not in message


@pytest.mark.parametrize(
    ("schema", "named"),
    [
        ({"type": "object", "properties": {"x": {"type": "null"}}}, "'x'"),
        ({"type": "object", "properties": {"x": {"type": "array"}}}, "'x'"),
        ({"type": "object", "properties": {"x": {"type": "object"}}}, "'x'"),
        ({"type": "object", "properties": {"x": {"enum": ["a", 1]}}}, "'x'"),
        (
            {
                "type": "object",
                "properties": {"x": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
            },
            "'x'",
        ),
        ({"type": "object", "properties": {"x": {"type": ["integer", "null"]}}}, "'x'"),
        ({"type": "array", "items": {"type": "string"}}, "object"),
        ({"type": "object", "properties": {"x": {"type": "strin"}}}, "not a valid JSON Schema"),
    ],
)
def test_schemas_without_a_column_type_are_refused(schema: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_output_schema(schema, None)


def test_schema_files_and_models_are_read_or_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(SCHEMA))
    assert load_output_schema(str(path), None) == SCHEMA
    assert load_output_schema(None, None) is None
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(ConfigError, match=r"bad\.json is not valid JSON"):
        load_output_schema(str(tmp_path / "bad.json"), None)
    with pytest.raises(ConfigError, match=r"missing\.json does not exist"):
        load_output_schema(str(tmp_path / "missing.json"), None)
    with pytest.raises(ConfigError, match="cannot be imported"):
        load_output_schema(None, "no_such_module:Model")
    with pytest.raises(ConfigError, match="not a Pydantic model"):
        load_output_schema(None, f"{__name__}:SCHEMA")
    with pytest.raises(ConfigError, match="not both"):
        load_output_schema(str(path), f"{__name__}:Ticket")


def test_replies_that_do_not_parse_or_validate_become_invalid_output() -> None:
    validator = ReplyValidator(SCHEMA)
    good = {"title": "t", "pages": 2, "kind": "memo", "tags": ["a"]}
    rows = [
        {"status": "succeeded", "text": json.dumps(good)},
        {"status": "succeeded", "text": '{"title": "t", "pag'},  # cut at max_tokens
        {"status": "succeeded", "text": json.dumps({**good, "pages": 0})},
        {"status": "succeeded", "text": json.dumps({**good, "author": {"age": 3}})},
        {"status": "errored", "text": None},
    ]
    for row in rows:
        validator.check(row)
    assert [r["status"] for r in rows] == [
        "succeeded",
        "invalid_output",
        "invalid_output",
        "invalid_output",
        "errored",
    ]
    assert rows[1]["error_type"] == NOT_JSON
    assert rows[1]["error_message"].startswith("not valid JSON")
    assert (rows[2]["error_type"], rows[2]["error_message"]) == (
        NOT_VALID,
        "pages: 0 is less than the minimum of 1",
    )
    assert rows[3]["error_message"] == "author: 'name' is a required property"
    assert rows[1]["text"] == '{"title": "t", "pag'  # the raw text is kept


def test_typed_columns_fill_valid_rows_and_leave_others_null() -> None:
    texts = pa.array(
        [
            json.dumps({"title": "a", "pages": 3, "kind": "memo", "author": {"name": "n"}}),
            '{"title": "cut',
        ]
    )
    table = typed_columns(texts, pa.array([True, False]), EXPECTED)
    assert table.schema == EXPECTED
    assert table.to_pylist()[0] | {"author": None} == {
        "title": "a",
        "pages": 3,
        "score": None,
        "draft": None,
        "kind": "memo",
        "level": None,
        "tags": None,
        "author": None,
        "note": None,
    }
    assert table.column("author").to_pylist()[0] == {"name": "n", "age": None}
    assert set(table.to_pylist()[1].values()) == {None}


def test_invalid_output_is_retried_only_when_asked() -> None:
    assert not is_retryable("invalid_output", NOT_JSON)
    assert is_retryable("invalid_output", NOT_VALID, RetryPolicy(retry_invalid_output=True))
    state = RequestState("h", 1, "b1", "invalid_output", NOT_JSON)
    assert not needs_submission(state, "h")
    assert needs_submission(state, "h", RetryPolicy(retry_invalid_output=True))
    assert not needs_submission(state, "h", RetryPolicy(max_attempts=1, retry_invalid_output=True))
