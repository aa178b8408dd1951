from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchline.build import (
    CUSTOM_ID_PATTERN,
    BudgetExceeded,
    build_manifest,
    build_shard,
    check_submittable,
    custom_id_for,
    requested_models,
    split_batches,
)
from batchline.config import MAX_REQUESTS_PER_BATCH, ConfigError, JobConfig, SourceOptions
from batchline.emulator.server import MAX_BODY_BYTES
from batchline.load import Document, stage_documents
from batchline.models import ModelLimits, ModelTable
from batchline.pricing import Usage, cost_usd
from batchline.storage import OutputLayout
from tests.support import model_table

MODELS = model_table("claude-haiku-4-5")


def test_custom_id_names_the_document_and_changes_with_the_request() -> None:
    asked = custom_id_for("reports/2024 Q1", "hash-of-template-a")
    assert CUSTOM_ID_PATTERN.match(asked)
    assert asked.startswith("reports_2024_Q1-")
    assert custom_id_for("reports/2024 Q1", "hash-of-template-a") == asked
    # Another request of the same document (new template, model or text) is another id, so an
    # answer on record is never served for a request that differs from the one it answered.
    assert custom_id_for("reports/2024 Q1", "hash-of-template-b") != asked


@given(st.lists(st.text(min_size=1, max_size=200), unique=True, max_size=50), st.text())
def test_custom_ids_are_valid_unique_and_stable(doc_ids: list[str], params: str) -> None:
    ids = [custom_id_for(d, params) for d in doc_ids]
    assert all(CUSTOM_ID_PATTERN.match(i) for i in ids)
    assert len(set(ids)) == len(ids)
    assert ids == [custom_id_for(d, params) for d in doc_ids]


@given(
    st.lists(st.integers(min_value=1, max_value=500), max_size=300),
    st.integers(min_value=1, max_value=40),
    st.integers(min_value=600, max_value=5000),
)
def test_split_never_exceeds_limits_and_drops_nothing(
    sizes: list[int], max_requests: int, max_bytes: int
) -> None:
    ranges = split_batches(sizes, max_requests, max_bytes)
    covered = [i for r in ranges for i in r]
    assert covered == list(range(len(sizes)))
    for r in ranges:
        assert 1 <= len(r) <= max_requests
        # the body is {"requests":[...]}: request bytes plus commas plus the envelope
        assert sum(sizes[i] + 1 for i in r) + 64 <= max_bytes


def test_a_batch_cut_at_the_default_byte_limit_is_a_body_the_api_accepts() -> None:
    # The API's "256 MB", read as the emulator reads it (docs/emulator.md): 256,000,000 bytes,
    # the stricter reading. A batch cut at 256 MiB was refused whole (413), and the run with it.
    # 11,000 requests of 26 KB, as a source of 26 KB documents gives: cut by bytes, not count.
    size = 26_000
    ranges = split_batches([size] * 11_000, MAX_REQUESTS_PER_BATCH, JobConfig().max_batch_bytes)
    assert len(ranges) == 2
    # The create body: {"requests":[ + the requests, comma-separated + ]}
    largest = max(len(b'{"requests":[]}') + len(r) * (size + 1) - 1 for r in ranges)
    assert largest <= MAX_BODY_BYTES


def test_build_shard_renders_template_and_system_with_cache_control() -> None:
    job = JobConfig(template="Title: {title}\n{text}", system="Be brief.", max_tokens=50)
    docs = [Document("a", "alpha text", {"title": "A"}), Document("b", "beta", {})]
    manifest, invalid = build_shard(docs, job, set(), MODELS)
    assert manifest.column("doc_id").to_pylist() == ["a"]
    params = orjson.loads(manifest.column("params_json")[0].as_py())
    assert params["messages"] == [{"role": "user", "content": "Title: A\nalpha text"}]
    assert params["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert params["max_tokens"] == 50
    assert invalid.to_pylist() == [{"doc_id": "b", "reason": "template: no field 'title'"}]


def test_build_shard_rejects_documents_over_the_context() -> None:
    job = JobConfig(max_tokens=1000)
    manifest, invalid = build_shard([Document("big", "x" * 900_000)], job, set(), MODELS)
    assert manifest.num_rows == 0
    assert "exceed the model's context of 200000 tokens" in invalid.column("reason")[0].as_py()


def test_build_shard_passes_load_reasons_through_and_keeps_custom_ids_unique() -> None:
    taken: set[str] = set()
    first, _ = build_shard([Document("a", "text")], JobConfig(), taken, MODELS)
    [custom_id] = first.column("custom_id").to_pylist()
    docs = [Document("a", "text"), Document("c", None, invalid_reason="empty document")]
    manifest, invalid = build_shard(docs, JobConfig(), taken, MODELS)
    assert manifest.num_rows == 0
    reasons = dict(zip(*(invalid.column(c).to_pylist() for c in ("doc_id", "reason")), strict=True))
    assert reasons == {"a": f"custom_id {custom_id} collides", "c": "empty document"}


def _summary(requests: int, cost: float | None, reasons: dict[str, int] | None = None):  # type: ignore[no-untyped-def]
    from batchline.build import BuildSummary

    return BuildSummary(
        fingerprint="f",
        requests=requests,
        invalid=sum((reasons or {}).values()),
        request_bytes=0,
        estimated_input_tokens=0,
        worst_case_cost_usd=cost,
        invalid_reasons=reasons or {},
        unpriced_models=[] if cost is not None else ["mystery"],
    )


def test_budget_refuses_over_budget_and_unpriced_models() -> None:
    check_submittable(_summary(10, 0.5), JobConfig(max_cost_usd=1.0))
    with pytest.raises(BudgetExceeded, match=r"over the budget of \$0\.10"):
        check_submittable(_summary(10, 0.5), JobConfig(max_cost_usd=0.1))
    with pytest.raises(BudgetExceeded, match="model 'mystery' has no price"):
        check_submittable(_summary(10, None), JobConfig(model="mystery", max_cost_usd=1.0))


def test_template_failing_for_every_document_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="fails for every document"):
        check_submittable(_summary(0, 0.0, {"template: no field 'nope'": 3}), JobConfig())


def test_bad_template_and_limits_are_rejected_with_the_field_named() -> None:
    with pytest.raises(ValueError, match="template"):
        JobConfig(template="{")
    with pytest.raises(ValueError, match="max_tokens"):
        JobConfig(max_tokens=0)


ROW_MODELS = model_table("claude-haiku-4-5", "claude-opus-4-6", "claude-sonnet-4-5").models | {
    "claude-gone": ModelLimits(model="claude-gone", problem="is retired"),
}


def _row(**fields: str) -> Document:
    return Document("row", "some text", fields)


def test_row_columns_override_the_run_and_blank_cells_keep_it() -> None:
    job = JobConfig(system="Run system.", max_tokens=100)
    table = ModelTable(models=ROW_MODELS)
    docs = [
        _row(model="claude-opus-4-6", max_tokens="300", system="Row system.", temperature="0.5"),
        Document("blank", "other text", {"model": " ", "max_tokens": "", "temperature": ""}),
    ]
    manifest, invalid = build_shard(docs, job, set(), table)
    assert invalid.num_rows == 0
    first, second = (orjson.loads(p) for p in manifest.column("params_json").to_pylist())
    assert (first["model"], first["max_tokens"], first["temperature"]) == (
        "claude-opus-4-6",
        300,
        0.5,
    )
    assert first["system"][0]["text"] == "Row system."
    assert (second["model"], second["max_tokens"]) == ("claude-haiku-4-5", 100)
    assert "temperature" not in second and second["system"][0]["text"] == "Run system."
    # The manifest keeps each row's model and max_tokens: its worst-case cost is priced by them.
    assert manifest.select(["model", "max_tokens"]).to_pylist() == [
        {"model": "claude-opus-4-6", "max_tokens": 300},
        {"model": "claude-haiku-4-5", "max_tokens": 100},
    ]


def test_row_column_names_are_options() -> None:
    job = JobConfig(model_column="engine", max_tokens_column="budget")
    docs = [_row(engine="claude-opus-4-6", budget="42", model="claude-gone")]
    manifest, _ = build_shard(docs, job, set(), ModelTable(models=ROW_MODELS))
    params = orjson.loads(manifest.column("params_json")[0].as_py())
    assert (params["model"], params["max_tokens"]) == ("claude-opus-4-6", 42)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"max_tokens": "abc"}, "max_tokens column: 'abc' is not a positive integer"),
        ({"max_tokens": "12.5"}, "max_tokens column: '12.5' is not a positive integer"),
        ({"max_tokens": "0"}, "max_tokens column: '0' is not a positive integer"),
        ({"max_tokens": "64001"}, "max_tokens 64001 is over claude-haiku-4-5's output limit"),
        ({"model": "claude-nope"}, "model column: model 'claude-nope' was not looked up"),
        ({"model": "claude-gone"}, "model column: model 'claude-gone' is retired"),
        ({"temperature": "hot"}, "temperature column: 'hot' is not a number from 0 to 1"),
        ({"temperature": "1.5"}, "temperature column: '1.5' is not a number from 0 to 1"),
    ],
)
def test_a_bad_row_value_makes_an_invalid_row_naming_the_field(
    fields: dict[str, str], reason: str
) -> None:
    good = Document("good", "fine text")
    manifest, invalid = build_shard(
        [_row(**fields), good], JobConfig(), set(), ModelTable(models=ROW_MODELS)
    )
    assert manifest.column("doc_id").to_pylist() == ["good"]
    [row] = invalid.to_pylist()
    assert row["doc_id"] == "row"
    assert row["reason"].startswith(reason)


def test_context_check_uses_each_rows_model() -> None:
    table = ModelTable(
        models={
            "claude-haiku-4-5": ModelLimits(model="claude-haiku-4-5", max_input_tokens=1_000),
            "claude-opus-4-6": ModelLimits(model="claude-opus-4-6", max_input_tokens=1_000_000),
        }
    )
    text = "x" * 8_000  # about 2000 tokens
    docs = [
        Document("small-context", text),
        Document("big-context", text, {"model": "claude-opus-4-6"}),
    ]
    manifest, invalid = build_shard(docs, JobConfig(max_tokens=10), set(), table)
    assert manifest.column("doc_id").to_pylist() == ["big-context"]
    assert invalid.column("reason")[0].as_py().endswith("the model's context of 1000 tokens")


def test_requested_models_reads_the_model_column_whatever_its_name(tmp_path: Path) -> None:
    column = 'modèle "x"'  # a name orjson must escape: the key is matched as it was written
    source = tmp_path / "rows.jsonl"
    rows = [
        {"id": "a", "text": "t", column: " claude-sonnet-4-5 "},
        {"id": "b", "text": "t", "note": f'{column}: "claude-opus-4-6"'},  # a value, not a key
        {"id": "c", "text": "t", column: "  "},
        {"id": "d", "text": "t", "model": "claude-opus-4-6"},  # the default column, not this one
        {"id": "e", "text": "t"},
    ]
    source.write_bytes(b"\n".join(orjson.dumps(r) for r in rows))
    layout = OutputLayout(str(tmp_path / "out"))
    stage_documents(str(source), layout, SourceOptions())
    assert requested_models(layout, JobConfig(model_column=column)) == {"claude-sonnet-4-5"}
    assert requested_models(layout, JobConfig()) == {"claude-opus-4-6"}


def test_worst_case_cost_prices_each_row_by_its_own_model(tmp_path: Path) -> None:
    source = tmp_path / "rows.jsonl"
    rows = [
        {"id": "h", "text": "a" * 400},
        {"id": "o", "text": "b" * 400, "model": "claude-sonnet-4-5", "max_tokens": 1000},
    ]
    source.write_bytes(b"\n".join(orjson.dumps(r) for r in rows))
    layout = OutputLayout(str(tmp_path / "out"))
    loaded = stage_documents(str(source), layout, SourceOptions())
    job = JobConfig(max_tokens=100)
    assert requested_models(layout, job) == {"claude-sonnet-4-5"}
    summary = build_manifest(layout, job, loaded.fingerprint, ModelTable(models=ROW_MODELS))
    haiku = cost_usd("claude-haiku-4-5", Usage(input_tokens=100, output_tokens=100))
    sonnet = cost_usd("claude-sonnet-4-5", Usage(input_tokens=100, output_tokens=1000))
    assert haiku is not None and sonnet is not None
    assert summary.worst_case_cost_usd == pytest.approx(haiku + sonnet)
    assert summary.unpriced_models == []


def test_invalid_parts_are_files_only_while_they_hold_rows(tmp_path: Path) -> None:
    source = tmp_path / "rows.jsonl"
    rows = [{"id": "a", "text": "fine"}, {"id": "b", "text": "also fine", "max_tokens": "lots"}]
    source.write_bytes(b"\n".join(orjson.dumps(r) for r in rows))
    layout = OutputLayout(str(tmp_path / "out"))
    loaded = stage_documents(str(source), layout, SourceOptions())
    summary = build_manifest(layout, JobConfig(), loaded.fingerprint, MODELS)
    assert summary.invalid == 1
    assert len(layout.names("invalid", ".parquet")) == 1

    # The row's bad value gone, the part has no invalid row: its earlier file must not stay
    # behind to be written as a result.
    source.write_bytes(orjson.dumps(rows[0]) + b"\n" + orjson.dumps({"id": "b", "text": "x"}))
    loaded = stage_documents(str(source), layout, SourceOptions())
    summary = build_manifest(layout, JobConfig(), loaded.fingerprint, MODELS)
    assert summary.invalid == 0 and summary.requests == 2
    assert layout.names("invalid", ".parquet") == []
