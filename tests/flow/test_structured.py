"""Structured outputs through the whole flow: typed Parquet columns from a schema or a model."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from pydantic import BaseModel

from batchline.config import ConfigError
from batchline.emulator import Emulator
from batchline.schemas import RESULTS
from batchline.structured import output_format
from batchline.write import RunSummary
from blocks.job import BatchJob
from flows.pipeline import batch_pipeline
from tests.support import write_documents

pytestmark = pytest.mark.usefixtures("prefect_server")

FAST = {"poll_interval": 0.1, "max_poll_interval": 0.5}

SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "pages": {"type": "integer"},
        "score": {"type": "number"},
        "draft": {"type": "boolean"},
        "kind": {"type": "string", "enum": ["memo", "letter", "report"]},
        "tags": {"type": "array", "items": {"type": "string"}},
        "author": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
            "required": ["name", "age"],
        },
        "note": {"type": "string"},
    },
    "required": ["title", "pages", "score", "draft", "kind", "tags", "author"],
}


class Sender(BaseModel):
    name: str
    vip: bool


class Review(BaseModel):
    sentiment: Literal["positive", "neutral", "negative"]
    stars: int
    confidence: float
    topics: list[str]
    sender: Sender
    summary: str | None = None


def _results(output: Path) -> tuple[pa.Schema, pd.DataFrame]:
    dataset = ds.dataset(output / "results", format="parquet")
    return dataset.schema, dataset.to_table().to_pandas()


def _run(source: Path, output: Path, **params: object) -> RunSummary:
    result = batch_pipeline(source=str(source), output=str(output), **{**FAST, **params})
    assert isinstance(result, RunSummary)
    return result


def test_a_json_schema_file_gives_typed_columns_after_the_standard_ones(
    tmp_path: Path, emulator_factory: Callable[..., Emulator], api_env: Callable[[Emulator], None]
) -> None:
    api_env(emulator_factory())
    write_documents(tmp_path / "docs", 12)
    (tmp_path / "docs" / "blank.txt").write_text("")
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps(SCHEMA))

    summary = _run(tmp_path / "docs", tmp_path / "out", output_schema=str(schema_file))

    assert summary.by_status == {"succeeded": 12, "invalid": 1}
    schema, table = _results(tmp_path / "out")
    assert schema.names == [*RESULTS.names, *SCHEMA["properties"]]
    typed = {name: schema.field(name).type for name in SCHEMA["properties"]}
    assert typed == {
        "title": pa.string(),
        "pages": pa.int64(),
        "score": pa.float64(),
        "draft": pa.bool_(),
        "kind": pa.string(),
        "tags": pa.list_(pa.string()),
        "author": pa.struct([("name", pa.string()), ("age", pa.int64())]),
        "note": pa.string(),
    }
    ok = table[table.status == "succeeded"]
    for row in ok.itertuples():
        reply = json.loads(row.text)  # the raw text is kept next to its columns
        assert (row.title, row.pages, row.kind, row.author) == (
            reply["title"],
            reply["pages"],
            reply["kind"],
            reply["author"],
        )
        assert list(row.tags) == reply["tags"]
        assert (row.note if isinstance(row.note, str) else None) == reply.get("note")
    assert table[table.status == "invalid"].title.isna().all()
    # Every request asked for the schema, made API-ready by the SDK.
    manifest = ds.dataset(tmp_path / "out" / "manifest", format="parquet").to_table()
    for params in manifest.column("params_json").to_pylist():
        assert orjson.loads(params)["output_config"] == {"format": output_format(SCHEMA)}


def test_a_pydantic_model_gives_typed_columns(
    tmp_path: Path, emulator_factory: Callable[..., Emulator], api_env: Callable[[Emulator], None]
) -> None:
    api_env(emulator_factory())
    write_documents(tmp_path / "docs", 8)

    summary = _run(
        tmp_path / "docs", tmp_path / "out", output_model=f"{__name__}:Review", max_tokens=2000
    )

    assert summary.by_status == {"succeeded": 8}
    schema, table = _results(tmp_path / "out")
    assert {name: schema.field(name).type for name in Review.model_fields} == {
        "sentiment": pa.string(),
        "stars": pa.int64(),
        "confidence": pa.float64(),
        "topics": pa.list_(pa.string()),
        "sender": pa.struct([("name", pa.string()), ("vip", pa.bool_())]),
        "summary": pa.string(),
    }
    for row in table.itertuples():
        assert Review.model_validate_json(row.text).sender.model_dump() == row.sender
        assert row.sentiment in {"positive", "neutral", "negative"}


def test_the_batch_job_block_carries_the_schema_and_refuses_a_colliding_one() -> None:
    job = BatchJob(output_model=f"{__name__}:Review").job_config(retry_invalid_output=True)
    assert job.output_schema == Review.model_json_schema() and job.retry_invalid_output
    assert BatchJob(output_schema=SCHEMA).job_config().output_schema == SCHEMA
    colliding = {"type": "object", "properties": {"attempts": {"type": "integer"}}}
    with pytest.raises(ConfigError, match="'attempts' collides"):
        BatchJob(output_schema=colliding).job_config()
