"""A run killed at the worst moments resumes from the same command, paying nothing twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pandas as pd

from batchline.emulator import Emulator
from tests.conftest import TEST_API_KEY
from tests.support import write_documents


def _cli_env(emulator: Emulator, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {
        "ANTHROPIC_BASE_URL": emulator.base_url,
        "ANTHROPIC_API_KEY": TEST_API_KEY,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    return env


def _run_cli(source: Path, output: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "batchline.cli",
            "run",
            str(source),
            "--output",
            str(output),
            "--poll-interval",
            "0.5",
            "--max-poll-interval",
            "1",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _submitted_batches(output: Path) -> list[str]:
    ledger = output / "ledger"
    if not ledger.exists():
        return []
    entries = [orjson.loads(p.read_bytes()) for p in ledger.glob("*.json")]
    return [e["batch_id"] for e in entries if e.get("batch_id")]


def test_killed_while_waiting_then_rerun_finishes_with_one_batch(
    tmp_path: Path, emulator_factory: Callable[..., Emulator]
) -> None:
    emulator = emulator_factory(processing_seconds=20)
    docs = write_documents(tmp_path / "docs", 25)
    env = _cli_env(emulator, tmp_path / "prefect-home")
    output = tmp_path / "out"

    first = _run_cli(tmp_path / "docs", output, env)
    deadline = time.monotonic() + 120
    while not _submitted_batches(output):
        assert first.poll() is None, first.stdout.read().decode() if first.stdout else ""
        assert time.monotonic() < deadline, "the run never submitted its batch"
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not (output / "results").exists()

    second = _run_cli(tmp_path / "docs", output, env)
    out, _ = second.communicate(timeout=240)
    assert second.returncode == 0, out.decode()

    stats = emulator.stats()
    assert stats["batches_created"] == 1
    assert stats["requests_submitted"] == 25
    table = pd.read_parquet(output / "results")
    assert sorted(table.doc_id) == sorted(docs)
    assert set(table.status) == {"succeeded"}
