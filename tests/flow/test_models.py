"""Models as the Models API describes them, and per-row parameters, through the whole flow."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import orjson
import pandas as pd
import pytest

from batchline.config import ConfigError
from batchline.emulator import Emulator
from batchline.emulator.models import DEFAULT_MODELS, EmulatedModel
from batchline.pricing import Usage, cost_usd
from batchline.write import RunSummary
from flows.pipeline import batch_pipeline
from tests.support import write_documents

pytestmark = pytest.mark.usefixtures("prefect_server")

FAST = {"poll_interval": 0.1, "max_poll_interval": 0.5}
CATALOGUE = (
    *DEFAULT_MODELS,
    EmulatedModel(id="claude-unpriced-9", display_name="Unpriced"),
    EmulatedModel(id="claude-nobatch", display_name="No batch", batch=False),
    EmulatedModel(id="claude-old", display_name="Old", lifecycle="retired"),
)


def _rows(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_bytes(b"\n".join(orjson.dumps(r) for r in rows))
    return path


def test_row_model_and_max_tokens_reach_the_requests_and_each_row_is_priced_by_its_model(
    tmp_path: Path, emulator_factory: Callable[..., Emulator], api_env: Callable[[Emulator], None]
) -> None:
    emulator = emulator_factory(models=CATALOGUE)
    api_env(emulator)
    source = _rows(
        tmp_path / "rows.jsonl",
        [
            {"id": "plain", "text": "Run settings for this one, please."},
            {"id": "opus", "text": "A long answer is wanted here.", "model": "claude-opus-4-6"},
            {"id": "short", "text": "Cut this answer very short, please.", "max_tokens": 3},
            {"id": "dated", "text": "A dated snapshot id.", "model": "claude-sonnet-4-5-20250929"},
            {"id": "bad-budget", "text": "x", "max_tokens": "lots"},
            {"id": "bad-model", "text": "y", "model": "claude-nope"},
            {"id": "too-many", "text": "z", "max_tokens": 100_000},
        ],
    )

    summary = batch_pipeline(source=str(source), output=str(tmp_path / "out"), **FAST)

    assert isinstance(summary, RunSummary)
    table = pd.read_parquet(tmp_path / "out" / "results").set_index("doc_id")
    ok = table[table.status == "succeeded"]
    # The emulator answers with the model it was asked for and stops at the request's max_tokens.
    assert ok.model.to_dict() == {
        "plain": "claude-haiku-4-5",
        "opus": "claude-opus-4-6",
        "short": "claude-haiku-4-5",
        "dated": "claude-sonnet-4-5-20250929",
    }
    assert (ok.loc["short", "stop_reason"], ok.loc["short", "output_tokens"]) == ("max_tokens", 3)
    assert ok.loc["plain", "stop_reason"] == "end_turn"
    for doc_id, row in ok.iterrows():
        usage = Usage(input_tokens=row.input_tokens, output_tokens=row.output_tokens)
        assert row.cost_usd == pytest.approx(cost_usd(row.model, usage)), doc_id
    # opus-4-6 at $5/$25, not haiku's $1/$5 nor opus-4's $15/$75.
    assert ok.loc["opus", "cost_usd"] == pytest.approx(
        (5 * ok.loc["opus", "input_tokens"] + 25 * ok.loc["opus", "output_tokens"]) / 2e6
    )
    invalid = table[table.status == "invalid"].error_message.to_dict()
    assert invalid == {
        "bad-budget": "max_tokens column: 'lots' is not a positive integer",
        "bad-model": "model column: model 'claude-nope' is unknown to the Models API",
        "too-many": "max_tokens 100000 is over claude-haiku-4-5's output limit of 64000 tokens",
    }
    assert summary.by_status == {"succeeded": 4, "invalid": 3}
    assert emulator.stats()["requests_submitted"] == 4


@pytest.mark.parametrize(
    ("model", "why"),
    [
        ("claude-nope", "is unknown to the Models API"),
        ("claude-nobatch", "does not support the Message Batches API"),
        ("claude-old", "is retired"),
    ],
)
def test_an_unusable_model_is_refused_before_anything_is_paid(
    model: str,
    why: str,
    tmp_path: Path,
    emulator_factory: Callable[..., Emulator],
    api_env: Callable[[Emulator], None],
) -> None:
    emulator = emulator_factory(models=CATALOGUE)
    api_env(emulator)
    write_documents(tmp_path / "docs", 2)
    with pytest.raises(ConfigError, match=f"model '{model}' {why}: nothing was submitted"):
        batch_pipeline(source=str(tmp_path / "docs"), output=str(tmp_path / "o"), model=model)
    assert not (tmp_path / "o" / "documents").exists()
    assert emulator.stats()["create_calls"] == 0


def test_a_model_without_a_price_runs_with_a_null_cost_and_one_warning(
    tmp_path: Path,
    emulator_factory: Callable[..., Emulator],
    api_env: Callable[[Emulator], None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    api_env(emulator_factory(models=CATALOGUE))
    source = _rows(
        tmp_path / "rows.jsonl",
        [
            {"id": "priced", "text": "Haiku has a price."},
            {"id": "unpriced", "text": "This one has none.", "model": "claude-unpriced-9"},
        ],
    )
    with caplog.at_level(logging.WARNING):
        summary = batch_pipeline(source=str(source), output=str(tmp_path / "out"), **FAST)
    assert isinstance(summary, RunSummary)
    warnings = [r.getMessage() for r in caplog.records if "claude-unpriced-9" in r.getMessage()]
    assert len(warnings) == 1
    assert "has no price in" in warnings[0] and "batchline/data/prices.json" in warnings[0]
    table = pd.read_parquet(tmp_path / "out" / "results").set_index("doc_id")
    assert pd.isna(table.loc["unpriced", "cost_usd"])
    assert table.loc["priced", "cost_usd"] > 0
    assert summary.unpriced_models == ["claude-unpriced-9"]
