"""Ctrl-C through the CLI: a prompt stop, one line, a Cancelled flow run, and a clean resume."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from uuid import UUID

import pandas as pd
import pytest

from batchline.emulator import Emulator
from deployments.local import wait_for
from tests.support import (
    assert_complete_and_paid_once,
    finish,
    run_cli,
    submitted_batches,
    write_documents,
)

pytestmark = pytest.mark.usefixtures("prefect_api")


def test_ctrl_c_during_wait_stops_within_seconds_cancelled_and_the_same_command_resumes(
    tmp_path: Path, emulator_env: Callable[..., tuple[Emulator, dict[str, str]]]
) -> None:
    from prefect import get_client
    from prefect.client.schemas.objects import StateType

    emulator, env = emulator_env(processing_seconds=20)
    docs = write_documents(tmp_path / "docs", 5)
    output = tmp_path / "out"
    process = run_cli(tmp_path / "docs", output, env)
    wait_for(lambda: submitted_batches(output), 120, "the first batch", process)
    time.sleep(1)  # well into wait

    process.send_signal(signal.SIGINT)
    interrupted_at = time.monotonic()
    code, printed = finish(process, timeout=60)

    assert time.monotonic() - interrupted_at < 10, printed
    assert code == 130, printed
    [batch_id] = submitted_batches(output)
    [line] = [line for line in printed.splitlines() if line.startswith("batchline:")]
    assert line == (
        f"batchline: stopped by Ctrl-C; still processing at the API: {batch_id}; "
        "run the same command again to resume"
    )
    assert "Traceback" not in printed and "Crash" not in printed, printed
    match = re.search(r"/runs/flow-run/([0-9a-f-]{36})", printed)
    assert match, printed
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(UUID(match[1])).state
    assert state is not None and state.type == StateType.CANCELLED, state

    code, printed = finish(run_cli(tmp_path / "docs", output, env))

    assert code == 0, printed
    assert submitted_batches(output) == [batch_id]
    assert_complete_and_paid_once(pd.read_parquet(output / "results"), emulator, set(docs))


def test_a_second_ctrl_c_exits_at_once(
    tmp_path: Path, emulator_env: Callable[..., tuple[Emulator, dict[str, str]]]
) -> None:
    _, env = emulator_env(processing_seconds=20)
    write_documents(tmp_path / "docs", 2)
    output = tmp_path / "out"
    process = run_cli(tmp_path / "docs", output, env)
    wait_for(lambda: submitted_batches(output), 120, "the first batch", process)

    process.send_signal(signal.SIGINT)
    time.sleep(0.05)  # while the first one is being handled
    process.send_signal(signal.SIGINT)
    interrupted_at = time.monotonic()
    code, printed = finish(process, timeout=60)

    assert time.monotonic() - interrupted_at < 1, printed
    assert code == 130, printed
