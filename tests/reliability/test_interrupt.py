"""Ctrl-C through the CLI: a prompt stop, one line, a Cancelled flow run, and a clean resume."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import pandas as pd
import pytest
from anthropic import Anthropic

from batchline.emulator import Emulator
from batchline.status import output_status
from batchline.storage import OutputLayout
from deployments.local import wait_for
from tests.conftest import TEST_API_KEY
from tests.support import (
    assert_complete_and_paid_once,
    batchline,
    finish,
    run_cli,
    submitted_batches,
    write_documents,
)

pytestmark = pytest.mark.usefixtures("prefect_api")


@dataclass
class Waiting:
    """A CLI run over a few documents that has submitted its batch and is waiting for it."""

    emulator: Emulator
    env: dict[str, str]
    source: Path
    docs: dict[str, str]
    output: Path
    process: subprocess.Popen[bytes]


@pytest.fixture
def waiting_run(
    tmp_path: Path, emulator_env: Callable[..., tuple[Emulator, dict[str, str]]]
) -> Callable[[int, float], Waiting]:
    """``waiting_run(documents, processing_seconds)``: such a run, against its own emulator."""

    def start(documents: int, processing_seconds: float) -> Waiting:
        emulator, env = emulator_env(processing_seconds=processing_seconds)
        docs = write_documents(tmp_path / "docs", documents)
        output = tmp_path / "out"
        process = run_cli(tmp_path / "docs", output, env)
        wait_for(lambda: submitted_batches(output), 120, "the first batch", process)
        return Waiting(emulator, env, tmp_path / "docs", docs, output, process)

    return start


def test_ctrl_c_during_wait_stops_within_seconds_cancelled_and_the_same_command_resumes(
    waiting_run: Callable[[int, float], Waiting],
) -> None:
    from prefect import get_client
    from prefect.client.schemas.objects import StateType

    run = waiting_run(5, 20)
    emulator, env, docs, output, process = run.emulator, run.env, run.docs, run.output, run.process
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
        f"run the same command again to resume, or batchline cancel {output} to stop paying for "
        "them"
    )
    assert "Traceback" not in printed and "Crash" not in printed, printed
    match = re.search(r"/runs/flow-run/([0-9a-f-]{36})", printed)
    assert match, printed
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(UUID(match[1])).state
    assert state is not None and state.type == StateType.CANCELLED, state

    code, printed = finish(run_cli(run.source, output, env))

    assert code == 0, printed
    assert submitted_batches(output) == [batch_id]
    assert_complete_and_paid_once(pd.read_parquet(output / "results"), emulator, set(docs))


def test_a_second_ctrl_c_exits_at_once(waiting_run: Callable[[int, float], Waiting]) -> None:
    process = waiting_run(2, 20).process

    process.send_signal(signal.SIGINT)
    time.sleep(0.05)  # while the first one is being handled
    process.send_signal(signal.SIGINT)
    interrupted_at = time.monotonic()
    code, printed = finish(process, timeout=60)

    assert time.monotonic() - interrupted_at < 1, printed
    assert code == 130, printed


def test_ctrl_c_then_cancel_stops_the_batch_and_retry_canceled_resumes_it(
    waiting_run: Callable[[int, float], Waiting],
) -> None:
    # Long enough that the cancel lands first, even on a busy machine; the resumed batch too.
    run = waiting_run(5, 30)
    emulator, env, docs, output, process = run.emulator, run.env, run.docs, run.output, run.process
    api = Anthropic(base_url=emulator.base_url, api_key=TEST_API_KEY)
    [batch_id] = submitted_batches(output)

    refused = batchline("cancel", str(output), env=env)
    assert refused.returncode == 2, refused.stdout
    [line] = refused.stdout.splitlines()
    assert line.startswith(f"batchline: output {output} is in use by flow run ")
    assert line.endswith("; stop that run first (Ctrl-C, or cancel its flow run), then cancel")
    assert api.messages.batches.retrieve(batch_id).processing_status == "in_progress"

    process.send_signal(signal.SIGINT)
    assert finish(process, timeout=60)[0] == 130
    cancelled = batchline("cancel", str(output), env=env)

    assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
    assert f"{batch_id} (5 requests): canceled" in cancelled.stdout
    assert "Traceback" not in cancelled.stderr
    wait_for(
        lambda: api.messages.batches.retrieve(batch_id).processing_status == "ended",
        30,
        "the canceled batch to end",
    )
    assert api.messages.batches.retrieve(batch_id).request_counts.canceled == 5

    code, printed = finish(run_cli(run.source, output, env))
    assert code == 0, printed
    table = pd.read_parquet(output / "results")
    assert sorted(table.doc_id) == sorted(docs) and set(table.status) == {"canceled"}
    assert (emulator.stats()["batches_created"], emulator.stats()["requests_submitted"]) == (1, 5)
    state = output_status(OutputLayout(str(output)))
    assert state.answers == {"canceled": 5} and state.spent_usd == 0.0
    again = batchline("cancel", str(output), env=env)
    assert again.returncode == 0
    assert again.stdout.strip() == f"nothing to cancel: no batch of {output} is processing"

    code, printed = finish(run_cli(run.source, output, env, "--retry-canceled"))
    assert code == 0, printed
    table = pd.read_parquet(output / "results")
    assert set(table.status) == {"succeeded"} and set(table.attempts) == {2}
    assert_complete_and_paid_once(table, emulator, set(docs))
    assert emulator.stats()["batches_created"] == 2
    resumed = output_status(OutputLayout(str(output)))
    assert resumed.answers == {"canceled": 5, "succeeded": 5}
    assert resumed.spent_usd == pytest.approx(table.cost_usd.sum()) and resumed.spent_usd > 0
