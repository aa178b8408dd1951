"""The CLI against an emulator that misbehaves: every row still ends once, and paid for once."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import orjson
import pandas as pd
import pytest

from batchline.emulator import Emulator
from batchline.failpoints import ENV_VAR
from tests.conftest import TEST_API_KEY
from tests.support import assert_complete_and_paid_once, finish, run_cli, submitted_batches


def _run_to_the_end(
    source: Path, output: Path, env: dict[str, str], *extra: str
) -> tuple[pd.DataFrame, str]:
    code, printed = finish(run_cli(source, output, env, *extra))
    assert code == 0, printed
    return pd.read_parquet(output / "results"), printed


# Each case: emulator settings, extra CLI arguments.
FAULTS: dict[str, tuple[dict[str, Any], list[str]]] = {
    "errored-and-expired-rows": (
        {
            "error_rates": {
                "overloaded_error": 0.2,
                "api_error": 0.1,
                "invalid_request_error": 0.1,
            },
            "expire_rate": 0.15,
            # expires_at an hour away is inside the 2 h warning window from the first poll.
            "expiry_seconds": 3600,
        },
        ["--max-attempts", "8"],
    ),
    # Seed 17 answers the first /v1 calls 500, 429, 529, 429: the create and the search for
    # what it made both meet the storm.
    "429-500-529-storm": ({"seed": 17, "http_error_rates": {429: 0.15, 500: 0.15, 529: 0.15}}, []),
    "lost-creates-and-cut-results": (
        {"lose_creates": 2, "cut_results": 2, "expire_rate": 0.3},
        ["--max-attempts", "8"],
    ),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_emulator_faults_end_with_one_row_per_document_each_paid_once(
    fault: str,
    corpus: tuple[Path, set[str]],
    tmp_path: Path,
    emulator_env: Callable[..., tuple[Emulator, dict[str, str]]],
) -> None:
    settings, extra = FAULTS[fault]
    source, doc_ids = corpus
    emulator, env = emulator_env(**{"seed": 11, **settings})

    table, printed = _run_to_the_end(source, tmp_path / "out", env, *extra)

    assert_complete_and_paid_once(table, emulator, doc_ids)
    stats = emulator.stats()
    ledger = [orjson.loads(p.read_bytes()) for p in (tmp_path / "out" / "ledger").glob("*.json")]
    assert stats["batches_created"] == len(ledger)  # every paid batch is in the ledger
    if fault == "errored-and-expired-rows":
        assert (table.attempts > 1).any(), "the faults should have forced retries"
        errored = table[table.status == "errored"]
        assert set(errored.error_type) <= {"invalid_request_error"}
        assert "expires at" in printed and "is still processing" in printed
    elif fault == "429-500-529-storm":
        assert stats["http_faults"] >= 4
        assert set(table.status) == {"succeeded"}
    else:
        assert sum(entry["adopted"] for entry in ledger) == 2, "both lost creates were adopted"
        assert stats["results_downloads"] > len(ledger), "cut downloads were retried"


def test_emulator_restarted_mid_wait_on_its_database(
    corpus: tuple[Path, set[str]],
    tmp_path: Path,
    emulator_env: Callable[..., tuple[Emulator, dict[str, str]]],
) -> None:
    source, doc_ids = corpus
    emulator, env = emulator_env(processing_seconds=4, db_path=str(tmp_path / "emulator.sqlite"))
    port = emulator.port
    run = run_cli(source, tmp_path / "out", env)
    deadline = time.monotonic() + 120
    while not submitted_batches(tmp_path / "out"):
        assert run.poll() is None, finish(run)[1]
        assert time.monotonic() < deadline, "the run never submitted its batch"
        time.sleep(0.2)

    emulator.stop()
    time.sleep(1.0)  # the run polls a closed port meanwhile
    emulator.start()
    assert emulator.port == port

    code, printed = finish(run)
    assert code == 0, printed
    assert_complete_and_paid_once(pd.read_parquet(tmp_path / "out" / "results"), emulator, doc_ids)
    assert emulator.stats()["batches_created"] == 1


def test_resume_after_the_results_retention_names_what_was_lost(
    corpus: tuple[Path, set[str]],
    tmp_path: Path,
    emulator_env: Callable[..., tuple[Emulator, dict[str, str]]],
) -> None:
    source, doc_ids = corpus
    emulator, env = emulator_env(results_retention_seconds=2)
    code, printed = finish(run_cli(source, tmp_path / "out", {**env, ENV_VAR: "wait.polled"}))
    assert code == -signal.SIGKILL, printed
    [batch_id] = submitted_batches(tmp_path / "out")
    client = anthropic.Anthropic(api_key=TEST_API_KEY, base_url=emulator.base_url)
    deadline = time.monotonic() + 30
    while client.messages.batches.retrieve(batch_id).archived_at is None:
        assert time.monotonic() < deadline, "the emulator never archived the batch"
        time.sleep(0.2)

    code, printed = finish(run_cli(source, tmp_path / "out", env))

    assert code != 0
    assert "past the API's 29-day retention" in printed
    assert f"{batch_id} ({len(doc_ids)} requests)" in printed
    assert f"{len(doc_ids)} requests have no result" in printed
    assert emulator.stats()["batches_created"] == 1, "nothing is resubmitted behind the user's back"
    assert not (tmp_path / "out" / "results").exists()
