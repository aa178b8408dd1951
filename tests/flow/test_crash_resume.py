"""A run killed at the worst moments resumes from the same command, paying nothing twice."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from batchline.emulator import Emulator
from tests.support import cli_env, run_cli, submitted_batches, write_documents


def test_killed_while_waiting_then_rerun_finishes_with_one_batch(
    tmp_path: Path, emulator_factory: Callable[..., Emulator]
) -> None:
    emulator = emulator_factory(processing_seconds=20)
    docs = write_documents(tmp_path / "docs", 25)
    env = cli_env(emulator, tmp_path / "prefect-home")
    output = tmp_path / "out"

    first = run_cli(tmp_path / "docs", output, env)
    deadline = time.monotonic() + 120
    while not submitted_batches(output):
        assert first.poll() is None, first.stdout.read().decode() if first.stdout else ""
        assert time.monotonic() < deadline, "the run never submitted its batch"
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not (output / "results").exists()

    second = run_cli(tmp_path / "docs", output, env)
    out, _ = second.communicate(timeout=240)
    assert second.returncode == 0, out.decode()

    stats = emulator.stats()
    assert stats["batches_created"] == 1
    assert stats["requests_submitted"] == 25
    table = pd.read_parquet(output / "results")
    assert sorted(table.doc_id) == sorted(docs)
    assert set(table.status) == {"succeeded"}
