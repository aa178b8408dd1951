"""The whole flow against the emulator over loopback, with the emulator's faults on."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from batchline.build import BudgetExceeded, BuildSummary
from batchline.config import ConfigError
from batchline.emulator import Emulator
from batchline.write import RunSummary
from flows.pipeline import batch_pipeline
from tests.support import write_documents

pytestmark = pytest.mark.usefixtures("prefect_server")

FAST = {"poll_interval": 0.1, "max_poll_interval": 0.5}


def _run(source: Path, output: Path, **params: object) -> RunSummary:
    result = batch_pipeline(source=str(source), output=str(output), **{**FAST, **params})
    assert isinstance(result, RunSummary)
    return result


def test_faults_are_retried_and_every_document_gets_exactly_one_row(
    tmp_path: Path, emulator_factory: Callable[..., Emulator], api_env: Callable[[Emulator], None]
) -> None:
    emulator = emulator_factory(
        seed=3,
        error_rates={"overloaded_error": 0.2, "api_error": 0.1},
        expire_rate=0.1,
        http_error_rates={429: 0.05, 500: 0.05, 529: 0.05},
    )
    api_env(emulator)
    docs = write_documents(tmp_path / "docs", 40)
    (tmp_path / "docs" / "blank.txt").write_text("\n")

    summary = _run(tmp_path / "docs", tmp_path / "out", max_attempts=6)

    table = pd.read_parquet(tmp_path / "out" / "results")
    assert sorted(table.doc_id) == sorted([*docs, "blank"])
    assert summary.by_status == {"succeeded": 40, "invalid": 1}
    ok = table[table.status == "succeeded"].set_index("doc_id")
    for doc_id, text in docs.items():
        assert text[:64] in ok.loc[doc_id, "text"]  # each answer belongs to its own document
    assert (ok.attempts > 1).any(), "the faults should have forced some retries"
    blank = table[table.doc_id == "blank"].iloc[0]
    assert (blank.status, blank.error_message) == ("invalid", "empty document")
    # The emulator saw each request exactly as often as the row says it was attempted.
    seen = emulator.stats()["requests_per_custom_id"]
    assert {cid: seen[cid] for cid in ok.custom_id} == dict(
        zip(ok.custom_id, ok.attempts, strict=True)
    )
    assert summary.cost_usd is not None and summary.cost_usd > 0
    assert summary.standard_cost_usd == pytest.approx(summary.cost_usd * 2)


def test_rerun_submits_nothing_and_new_documents_only_themselves(
    tmp_path: Path, emulator_factory: Callable[..., Emulator], api_env: Callable[[Emulator], None]
) -> None:
    emulator = emulator_factory()
    api_env(emulator)
    write_documents(tmp_path / "docs", 10)
    first = _run(tmp_path / "docs", tmp_path / "out")
    assert emulator.stats()["requests_submitted"] == 10

    again = _run(tmp_path / "docs", tmp_path / "out")
    assert again == first
    assert emulator.stats()["requests_submitted"] == 10

    write_documents(tmp_path / "docs", 3, start=10)
    grown = _run(tmp_path / "docs", tmp_path / "out")
    stats = emulator.stats()
    assert stats["requests_submitted"] == 13
    assert set(stats["requests_per_custom_id"].values()) == {1}
    assert grown.by_status == {"succeeded": 13}
    assert len(pd.read_parquet(tmp_path / "out" / "results")) == 13


def test_invalid_request_errors_are_never_retried(
    tmp_path: Path, emulator_factory: Callable[..., Emulator], api_env: Callable[[Emulator], None]
) -> None:
    emulator = emulator_factory(seed=5, error_rates={"invalid_request_error": 0.5})
    api_env(emulator)
    write_documents(tmp_path / "docs", 20)
    summary = _run(tmp_path / "docs", tmp_path / "out", max_attempts=3)
    table = pd.read_parquet(tmp_path / "out" / "results")
    errored = table[table.status == "errored"]
    assert len(errored) == summary.by_status["errored"] > 0
    assert set(errored.error_type) == {"invalid_request_error"}
    assert set(errored.attempts) == {1}
    assert errored.error_message.str.len().min() > 0
    assert emulator.stats()["batches_created"] == 1


def test_lost_create_response_is_adopted_not_paid_twice(
    tmp_path: Path, emulator_factory: Callable[..., Emulator], api_env: Callable[[Emulator], None]
) -> None:
    emulator = emulator_factory(lose_creates=1, cut_results=1)
    api_env(emulator)
    write_documents(tmp_path / "docs", 12)
    summary = _run(tmp_path / "docs", tmp_path / "out")
    stats = emulator.stats()
    assert stats["batches_created"] == 1
    assert stats["requests_submitted"] == 12
    assert summary.by_status == {"succeeded": 12}


def test_dry_run_and_budget_submit_nothing(
    tmp_path: Path, emulator_factory: Callable[..., Emulator], api_env: Callable[[Emulator], None]
) -> None:
    emulator = emulator_factory()
    api_env(emulator)
    write_documents(tmp_path / "docs", 5)
    built = batch_pipeline(source=str(tmp_path / "docs"), output=str(tmp_path / "o"), dry_run=True)
    assert isinstance(built, BuildSummary)
    assert built.requests == 5
    assert built.worst_case_cost_usd is not None and built.worst_case_cost_usd > 0
    with pytest.raises(BudgetExceeded, match="over the budget"):
        batch_pipeline(
            source=str(tmp_path / "docs"), output=str(tmp_path / "o"), max_cost_usd=0.000001
        )
    assert emulator.stats()["create_calls"] == 0


def test_missing_api_key_fails_before_loading_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    write_documents(tmp_path / "docs", 2)
    with pytest.raises(ConfigError, match="ANTHROPIC_API_KEY"):
        batch_pipeline(source=str(tmp_path / "docs"), output=str(tmp_path / "out"))
    assert not (tmp_path / "out" / "documents").exists()


def test_template_with_unknown_field_fails_with_the_field_named(
    tmp_path: Path, emulator_factory: Callable[..., Emulator], api_env: Callable[[Emulator], None]
) -> None:
    emulator = emulator_factory()
    api_env(emulator)
    write_documents(tmp_path / "docs", 3)
    with pytest.raises(ConfigError, match="'title'"):
        batch_pipeline(
            source=str(tmp_path / "docs"), output=str(tmp_path / "o"), template="{title}: {text}"
        )
    assert emulator.stats()["create_calls"] == 0


def test_max_tokens_over_the_models_limit_fails_before_loading(
    tmp_path: Path, emulator_factory: Callable[..., Emulator], api_env: Callable[[Emulator], None]
) -> None:
    emulator = emulator_factory()
    api_env(emulator)
    write_documents(tmp_path / "docs", 2)
    with pytest.raises(ConfigError, match="output limit of 64000 tokens \\(Models API\\)"):
        batch_pipeline(
            source=str(tmp_path / "docs"),
            output=str(tmp_path / "o"),
            model="claude-haiku-4-5-20251001",
            max_tokens=64_001,
        )
    assert not (tmp_path / "o" / "documents").exists()
    assert emulator.stats()["create_calls"] == 0
