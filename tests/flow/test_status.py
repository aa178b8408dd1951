"""`batchline status` says what an output has asked, paid for and been answered, at every stage of
a run that dies twice, and agrees with the API's own counts and the results; it writes nothing."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from batchline.emulator import Emulator
from batchline.failpoints import ENV_VAR
from batchline.status import OutputStatus, output_status
from batchline.storage import OutputLayout
from tests.support import batchline, cli_env, finish, run_cli, submitted_batches, write_documents


def _files(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def _status(output: Path) -> OutputStatus:
    """The status, checked to have left every file under ``output`` as it was."""
    before = _files(output)
    state = output_status(OutputLayout(str(output)))
    assert _files(output) == before
    return state


def test_status_follows_a_run_killed_twice_and_matches_the_api_and_the_results(
    tmp_path: Path, emulator_factory: Callable[..., Emulator]
) -> None:
    emulator = emulator_factory(processing_seconds=8, error_rates={"overloaded_error": 0.3}, seed=5)
    write_documents(tmp_path / "docs", 25)
    env = cli_env(emulator, tmp_path / "prefect-home")
    output = tmp_path / "out"

    # Killed after recording its intent, before the create call.
    code, printed = finish(run_cli(tmp_path / "docs", output, env | {ENV_VAR: "submit.intent"}))
    assert code == -signal.SIGKILL, printed
    state = _status(output)
    assert state.loaded is not None and state.loaded.documents == 25
    assert state.built is not None and state.built.requests == 25
    assert (state.creates_in_doubt, state.batches_created, state.requests_submitted) == (1, 0, 0)
    assert state.answers == {} and state.spent_usd == 0.0 and state.results is None

    # Killed while its batch processes.
    second = run_cli(tmp_path / "docs", output, env)
    deadline = time.monotonic() + 120
    while not submitted_batches(output):
        assert second.poll() is None, finish(second)[1]
        assert time.monotonic() < deadline, "the run never submitted its batch"
        time.sleep(0.2)
    state = _status(output)
    [batch_id] = submitted_batches(output)
    assert state.creates_in_doubt == 0
    assert [(p.batch_id, p.request_count) for p in state.processing] == [(batch_id, 25)]
    assert (state.batches_created, state.requests_submitted) == (1, 25)
    assert state.answers == {} and state.spent_usd == 0.0 and state.results is None
    printed_status = batchline("status", str(output), env=env)
    assert printed_status.returncode == 0, printed_status.stderr
    assert f"{batch_id} (25 requests, expires 20" in printed_status.stdout
    assert "Traceback" not in printed_status.stderr
    second.send_signal(signal.SIGKILL)
    second.wait()

    code, printed = finish(run_cli(tmp_path / "docs", output, env))
    assert code == 0, printed
    state = _status(output)
    stats = emulator.stats()
    results = pd.read_parquet(output / "results")
    assert state.processing == []
    assert state.batches_created == stats["batches_created"]
    assert state.requests_submitted == stats["requests_submitted"]
    # Every request submitted was answered once; the overloaded ones again on a retry.
    assert sum(state.answers.values()) == stats["requests_submitted"] > 25
    assert state.answers.get("errored", 0) == stats["requests_submitted"] - 25 + sum(
        results.status == "errored"
    )
    assert state.spent_usd == pytest.approx(results.cost_usd.sum())
    assert state.spent_usd > 0
    assert state.results is not None and state.results.rows == len(results) == 25
    assert state.results.by_status == results.status.value_counts().to_dict()


def test_status_of_a_folder_without_a_run_is_a_one_line_refusal(tmp_path: Path) -> None:
    shown = batchline("status", str(tmp_path))
    assert shown.returncode == 2
    assert shown.stdout.strip().splitlines() == [
        f"batchline: {tmp_path} holds no batchline run (no batchline-run.json); pass the "
        "--output of a run"
    ]
