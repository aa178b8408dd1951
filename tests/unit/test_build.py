from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchline.build import (
    CUSTOM_ID_PATTERN,
    BudgetExceeded,
    build_shard,
    check_submittable,
    custom_id_for,
    split_batches,
)
from batchline.config import ConfigError, JobConfig
from batchline.load import Document


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


def test_build_shard_renders_template_and_system_with_cache_control() -> None:
    job = JobConfig(template="Title: {title}\n{text}", system="Be brief.", max_tokens=50)
    docs = [Document("a", "alpha text", {"title": "A"}), Document("b", "beta", {})]
    manifest, invalid = build_shard(docs, job, set())
    assert manifest.column("doc_id").to_pylist() == ["a"]
    params = orjson.loads(manifest.column("params_json")[0].as_py())
    assert params["messages"] == [{"role": "user", "content": "Title: A\nalpha text"}]
    assert params["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert params["max_tokens"] == 50
    assert invalid.to_pylist() == [{"doc_id": "b", "reason": "template: no field 'title'"}]


def test_build_shard_rejects_documents_over_the_context() -> None:
    job = JobConfig(max_tokens=1000)
    manifest, invalid = build_shard([Document("big", "x" * 900_000)], job, set())
    assert manifest.num_rows == 0
    assert "exceed the model's context of 200000 tokens" in invalid.column("reason")[0].as_py()


def test_build_shard_passes_load_reasons_through_and_keeps_custom_ids_unique() -> None:
    taken: set[str] = set()
    first, _ = build_shard([Document("a", "text")], JobConfig(), taken)
    [custom_id] = first.column("custom_id").to_pylist()
    docs = [Document("a", "text"), Document("c", None, invalid_reason="empty document")]
    manifest, invalid = build_shard(docs, JobConfig(), taken)
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
    )


def test_budget_refuses_over_budget_and_unpriced_models() -> None:
    check_submittable(_summary(10, 0.5), JobConfig(max_cost_usd=1.0))
    with pytest.raises(BudgetExceeded, match=r"over the budget of \$0\.10"):
        check_submittable(_summary(10, 0.5), JobConfig(max_cost_usd=0.1))
    with pytest.raises(BudgetExceeded, match="no price"):
        check_submittable(_summary(10, None), JobConfig(model="mystery", max_cost_usd=1.0))


def test_template_failing_for_every_document_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="fails for every document"):
        check_submittable(_summary(0, 0.0, {"template: no field 'nope'": 3}), JobConfig())


def test_bad_template_and_limits_are_rejected_with_the_field_named() -> None:
    with pytest.raises(ValueError, match="template"):
        JobConfig(template="{")
    with pytest.raises(ValueError, match="max_tokens"):
        JobConfig(max_tokens=0)
