"""Structured outputs through the CLI: invalid replies, their retry on request, a bad schema.

The CLI runs in this process (``batchline.cli.main``) against the suite's Prefect server.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchline.cli import main
from batchline.emulator import Emulator
from batchline.structured import NOT_JSON, NOT_VALID
from tests.support import write_documents

pytestmark = pytest.mark.usefixtures("prefect_api")

FAST = ["--poll-interval", "0.2", "--max-poll-interval", "0.5"]

SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["spam", "ham"]},
        "score": {"type": "integer"},
    },
    "required": ["label", "score"],
}


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Exit code and printed text of one `batchline` command, table rules and wrapping removed."""
    code = main(list(argv))
    printed = capsys.readouterr().out
    return code, " ".join(printed.translate({ord("│"): " ", ord("┃"): " "}).split())


@pytest.fixture
def schema_file(tmp_path: Path) -> Path:
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(SCHEMA))
    return path


def test_invalid_replies_are_rows_and_are_resubmitted_only_with_retry_invalid_output(
    tmp_path: Path,
    schema_file: Path,
    emulator_factory: Callable[..., Emulator],
    api_env: Callable[[Emulator], None],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    emulator = emulator_factory(seed=4, output_fault_rates={"truncated": 0.2, "mismatched": 0.2})
    api_env(emulator)
    monkeypatch.setenv("COLUMNS", "1000")
    write_documents(tmp_path / "docs", 30)
    argv = ["run", str(tmp_path / "docs"), "--output", str(tmp_path / "out"), *FAST]
    argv += ["--output-schema", str(schema_file)]

    code, printed = _cli(capsys, *argv)

    assert code == 0, printed
    table = pd.read_parquet(tmp_path / "out" / "results")
    bad = table[table.status == "invalid_output"]
    assert f"rows invalid_output {len(bad)}" in printed
    assert set(bad.error_type) == {NOT_JSON, NOT_VALID}
    for row in bad.itertuples():
        assert row.text  # the raw reply is kept
        assert pd.isna(row.label) and pd.isna(row.score)
        assert row.cost_usd > 0  # paid for like any reply
        if row.error_type == NOT_JSON:
            assert row.stop_reason == "max_tokens"
            assert row.error_message.startswith("not valid JSON")
        else:
            assert row.error_message == "label: [[]] is not of type 'string'"
    good = table[table.status == "succeeded"]
    assert len(good) + len(bad) == 30 and len(bad) >= 6
    assert set(good.label) <= {"spam", "ham"}
    assert (
        pq.read_schema(next((tmp_path / "out" / "results").glob("batch-*"))).field("score").type
        == pa.int64()
    )
    # Without --retry-invalid-output nothing was sent twice.
    assert set(emulator.stats()["requests_per_custom_id"].values()) == {1}

    code, printed = _cli(capsys, *argv, "--retry-invalid-output")

    assert code == 0, printed
    after = pd.read_parquet(tmp_path / "out" / "results").set_index("custom_id")
    seen = emulator.stats()["requests_per_custom_id"]
    assert {cid for cid, n in seen.items() if n > 1} == set(bad.custom_id)
    assert {cid: seen[cid] for cid in after.index} == after.attempts.to_dict()
    assert (after.status == "succeeded").sum() > len(good)


def test_a_field_named_like_a_results_column_is_refused_before_anything_is_loaded(
    tmp_path: Path,
    emulator_factory: Callable[..., Emulator],
    api_env: Callable[[Emulator], None],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    emulator = emulator_factory()
    api_env(emulator)
    monkeypatch.setenv("COLUMNS", "1000")
    write_documents(tmp_path / "docs", 3)
    colliding = tmp_path / "colliding.json"
    colliding.write_text(
        json.dumps({"type": "object", "properties": {"cost_usd": {"type": "number"}}})
    )
    output = tmp_path / "out"

    code = main(
        ["run", str(tmp_path / "docs"), "--output", str(output), "--output-schema", str(colliding)]
    )

    printed = capsys.readouterr().out.strip()
    assert code == 2
    assert printed == (
        "batchline: output schema field 'cost_usd' collides with the results column "
        "'cost_usd'; rename the field"
    )
    assert not output.exists(), "nothing may be loaded with an unusable schema"
    assert emulator.stats()["create_calls"] == 0
