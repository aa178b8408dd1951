"""The deployments of prefect.yaml on a real Prefect server, process work pool and worker.

One server, worker and pair of emulators (separate processes, state in SQLite files) serve the
whole module. Pipeline runs go through the worker exactly as a UI "Run" would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any
from uuid import UUID

import anthropic
import pandas as pd
import pytest
from prefect import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import Artifact, FlowRun, StateType, TaskRun
from prefect.client.schemas.sorting import FlowRunSort
from prefect.deployments import run_deployment
from prefect.flow_runs import resume_flow_run
from prefect.settings import PREFECT_API_URL, temporary_settings

from batchline.ledger import Ledger
from batchline.report import artifact_key
from batchline.storage import OutputLayout
from blocks.credentials import AnthropicCredentials
from deployments import stack
from flows.pipeline import batch_pipeline
from flows.sentinel import resume_finished_runs
from flows.suspend import WAIT_KEY_PREFIX
from tests.conftest import TEST_API_KEY
from tests.support import write_documents

pytestmark = pytest.mark.integration

PIPELINE = "batchline-pipeline/batchline-pipeline"
SENTINEL = "batchline-sentinel/batchline-sentinel"
BACKFILL = "batchline-backfill/batchline-backfill"
# Longer than the pipeline's polling window plus the sentinel's first look, so the run is
# suspended and checked while its batch still processes.
SLOW_PROCESSING_SECONDS = 25
FAST: dict[str, Any] = {"poll_interval": 0.2, "max_poll_interval": 1.0}


@dataclass
class Emulated:
    base_url: str
    credentials_block: str

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.base_url}/_emulator/stats", timeout=10) as response:
            stats: dict[str, Any] = json.load(response)
        return stats

    def client(self) -> anthropic.Anthropic:
        return anthropic.Anthropic(api_key=TEST_API_KEY, base_url=self.base_url)


@dataclass
class Stack:
    ui_url: str
    slow: Emulated
    fast: Emulated


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Server, pool, worker and emulators up; prefect.yaml deployed; this process a client."""
    state = tmp_path_factory.mktemp("stack")
    started: list[subprocess.Popen[bytes]] = []
    try:
        server, api_url = stack.start_server(
            state / "home", stack.free_port(), state / "server.log"
        )
        started.append(server)
        # No API key in the worker's environment: every run names its credentials block.
        env = stack.client_env(api_url, state / "home", PREFECT_WORKER_QUERY_SECONDS="1")
        env.pop("ANTHROPIC_API_KEY", None)
        env.pop("ANTHROPIC_BASE_URL", None)
        stack.create_pool(env)
        started.append(stack.start_worker(env, state / "worker.log"))
        stack.deploy(env)
        emulators = {}
        for name, seconds in (("slow", SLOW_PROCESSING_SECONDS), ("fast", 0.3)):
            process, url = stack.start_emulator(
                state / f"{name}.db", state / f"{name}-emulator.log", seconds
            )
            started.append(process)
            emulators[name] = Emulated(url, f"emulator-{name}")
        with temporary_settings({PREFECT_API_URL: api_url}):
            for emulated in emulators.values():
                AnthropicCredentials(api_key=TEST_API_KEY, base_url=emulated.base_url).save(
                    emulated.credentials_block, overwrite=True
                )
            yield Stack(api_url.removesuffix("/api"), emulators["slow"], emulators["fast"])
    finally:
        stack.stop(*started)


def test_a_deployed_run_suspends_and_the_sentinel_resumes_it_when_its_batch_ends(
    deployed: Stack, tmp_path: Path
) -> None:
    docs = write_documents(tmp_path / "docs", 12)
    output = tmp_path / "out"
    run = _start(
        PIPELINE,
        source=str(tmp_path / "docs"),
        output=str(output),
        credentials_block=deployed.slow.credentials_block,
        suspend_after_seconds=2,
        **FAST,
    )

    suspended = _wait_for_run(run, lambda r: r.state is not None and r.state.is_paused(), 180)
    assert suspended.state is not None and suspended.state.name == "Suspended"
    assert (suspended.state.state_details.pause_key or "").startswith(WAIT_KEY_PREFIX)
    assert suspended.infrastructure_pid, "the worker records the flow-run process"
    pid = int(suspended.infrastructure_pid.rsplit(":", 1)[-1])
    stack.wait_for(lambda: _exited(pid), 60, "the suspended run's process to exit")

    # The sentinel looks while the batch still processes: the run stays suspended.
    [batch_id] = [str(e.batch_id) for e in Ledger(OutputLayout(str(output))).entries()]
    early = [c for c in resume_finished_runs() if c.flow_run_id == run]
    assert deployed.slow.client().messages.batches.retrieve(batch_id).processing_status != "ended"
    assert [c.ready for c in early] == [False]
    still = _read_run(run).state
    assert still is not None and still.is_paused()

    # Once the batch has ended, the sentinel deployment (triggered or on its schedule) resumes it.
    stack.wait_for(
        lambda: (
            deployed.slow.client().messages.batches.retrieve(batch_id).processing_status == "ended"
        ),
        120,
        "the emulated batch to end",
    )
    run_deployment(SENTINEL, timeout=180, poll_interval=1, as_subflow=False)
    final = _wait_for_run(run, lambda r: r.state is not None and r.state.is_final(), 240)
    assert final.state is not None and final.state.is_completed(), final.state

    resumed_by = [row for a in _artifacts("batchline-sentinel") for row in _rows(a) if row["ready"]]
    assert str(run) in [row["flow_run_id"] for row in resumed_by]
    stats = deployed.slow.stats()
    assert stats["batches_created"] == 1
    results = pd.read_parquet(output / "results")
    assert sorted(results.doc_id) == sorted(docs)
    assert stats["requests_per_custom_id"] == dict.fromkeys(results.custom_id, 1)
    # The resumed run replayed from the top: every step finished before the suspend was Cached.
    states = _task_states(run)
    for step in ("load-documents", "build-requests", "submit-new-1"):
        assert sorted(states[step]) == ["Cached", "Completed"], (step, states)
    assert sorted(states["wait"]) == ["Completed", "Completed"]
    assert states["collect"] == ["Completed"]
    root = OutputLayout(str(output)).root
    keys = {a.key: a for a in _artifacts_of(run)}
    summary = keys[artifact_key("batchline-summary", root)]
    assert "| succeeded | 12 |" in str(summary.data), summary.data
    link = keys[artifact_key("batchline-output", root)]
    assert (output / "results").as_uri() in str(link.data), link.data


def test_the_work_pool_starts_a_bounded_number_of_runs(deployed: Stack) -> None:
    with get_client(sync_client=True) as client:
        pool = client.read_work_pool(stack.POOL)
    assert pool.concurrency_limit == stack.POOL_LIMIT


def test_an_over_budget_run_waits_for_approval_in_the_ui(deployed: Stack, tmp_path: Path) -> None:
    before = deployed.fast.stats()["create_calls"]
    runs = {}
    for decision, start in (("approve", 100), ("reject", 200)):
        write_documents(tmp_path / decision, 4, start=start)
        runs[decision] = _start(
            PIPELINE,
            source=str(tmp_path / decision),
            output=str(tmp_path / f"out-{decision}"),
            credentials_block=deployed.fast.credentials_block,
            max_cost_usd=0.000001,
            **FAST,
        )
    for run in runs.values():
        paused = _wait_for_run(run, lambda r: r.state is not None and r.state.is_paused(), 180)
        keyset = paused.state.state_details.run_input_keyset  # type: ignore[union-attr]
        assert keyset, "the run waits for a form, not for its batches"
        with get_client(sync_client=True) as client:
            description = client.read_flow_run_input(run, keyset["description"])
        assert "over the budget" in description and "approve" in description
    assert deployed.fast.stats()["create_calls"] == before

    # What the UI's "Resume" form sends.
    resume_flow_run(runs["approve"], run_input={"approve": True})
    resume_flow_run(runs["reject"], run_input={"approve": False})

    approved = _wait_for_run(runs["approve"], lambda r: bool(r.state and r.state.is_final()), 240)
    rejected = _wait_for_run(runs["reject"], lambda r: bool(r.state and r.state.is_final()), 240)
    assert approved.state is not None and approved.state.is_completed(), approved.state
    assert rejected.state is not None and rejected.state.is_failed()
    assert "rejected in the UI" in (rejected.state.message or "")
    assert deployed.fast.stats()["create_calls"] == before + 1
    assert len(pd.read_parquet(tmp_path / "out-approve" / "results")) == 4
    assert not (tmp_path / "out-reject" / "ledger").exists()


def test_backfill_runs_each_day_once_and_skips_a_finished_one(
    deployed: Stack, tmp_path: Path
) -> None:
    days = [date(2024, 3, 1), date(2024, 3, 2)]
    for n, day in enumerate(days):
        write_documents(tmp_path / "docs" / f"{day:%Y-%m-%d}", 3, start=300 + 10 * n)
    output = tmp_path / "out"
    # The first day was done before, by a direct run into its partition folder.
    batch_pipeline(
        source=str(tmp_path / "docs" / "2024-03-01"),
        output=str(output / "date=2024-03-01"),
        credentials_block=deployed.fast.credentials_block,
        **FAST,
    )
    before = deployed.fast.stats()

    run = run_deployment(
        BACKFILL,
        parameters={
            "source_template": str(tmp_path / "docs" / "{date:%Y-%m-%d}"),
            "output": str(output),
            "start_date": days[0].isoformat(),
            "end_date": days[1].isoformat(),
            "parameters": {"credentials_block": deployed.fast.credentials_block, **FAST},
            "poll_interval": 1,
        },
        timeout=300,
        poll_interval=1,
        as_subflow=False,
    )
    assert isinstance(run, FlowRun)
    assert run.state is not None and run.state.is_completed(), run.state

    [table] = _artifacts("batchline-backfill")
    outcomes = {row["day"]: row["state"] for row in _rows(table)}
    assert outcomes == {"2024-03-01": "Skipped (complete)", "2024-03-02": "Completed"}
    after = deployed.fast.stats()
    assert after["batches_created"] == before["batches_created"] + 1
    assert set(after["requests_per_custom_id"].values()) == {1}
    summaries = set()
    for folder in ("date=2024-03-01", "date=2024-03-02"):
        assert len(pd.read_parquet(output / folder / "results")) == 3
        # Each day keeps its own summary, rather than one key moved by every day.
        key = artifact_key("batchline-summary", str(output / folder))
        [summary] = _artifacts(key)
        summaries.add(key)
        assert "| succeeded | 3 |" in str(summary.data), summary.data
    assert len(summaries) == 2


def test_the_ui_shows_a_finished_run(deployed: Stack, tmp_path: Path) -> None:
    """Opens a finished run's page in headless Chromium and keeps a screenshot of it."""
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not installed: deployments/screenshot.sh installs it (opt-in)")
    run = _finished_pipeline_run(deployed, tmp_path)
    png, dom = tmp_path / "flow-run.png", tmp_path / "flow-run.html"
    subprocess.run(
        [
            str(stack.REPO / "deployments" / "screenshot.sh"),
            f"{deployed.ui_url}/runs/flow-run/{run.id}",
            str(png),
            str(dom),
        ],
        env={**os.environ, "BATCHLINE_NO_INSTALL": "1"},
        check=True,
        timeout=180,
    )
    page = dom.read_text()
    assert "Can't connect" not in page
    assert run.name in page and "load-documents" in page
    assert png.stat().st_size > 20_000
    if keep := os.environ.get("BATCHLINE_KEEP_SCREENSHOT"):  # e.g. docs/flow-run.png
        shutil.copyfile(png, keep)


def _start(deployment: str, **parameters: Any) -> UUID:
    run = run_deployment(deployment, parameters=parameters, timeout=0, as_subflow=False)
    assert isinstance(run, FlowRun)
    return run.id


def _read_run(run: UUID) -> FlowRun:
    with get_client(sync_client=True) as client:
        return client.read_flow_run(run)


def _wait_for_run(run: UUID, done: Callable[[FlowRun], bool], timeout: float) -> FlowRun:
    """Poll the run until ``done``; fail at once if it ends some other way."""
    seen: list[FlowRun] = []

    def check() -> bool:
        seen.append(_read_run(run))
        latest = seen[-1]
        if done(latest):
            return True
        assert not (latest.state and latest.state.is_final()), latest.state
        return False

    stack.wait_for(check, timeout, f"flow run {run}")
    return seen[-1]


def _exited(pid: int) -> bool:
    """The process is gone, or a zombie its parent has not reaped yet."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


def _task_states(run: UUID) -> dict[str, list[str]]:
    """State names of the run's task runs, by task name without Prefect's random suffix."""
    with get_client(sync_client=True) as client:
        task_runs: list[TaskRun] = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run]))
        )
    states: dict[str, list[str]] = {}
    for task_run in task_runs:
        name = task_run.name
        if not name.startswith("submit-"):  # named by kind and round, not a random suffix
            name = name.rsplit("-", 1)[0]
        states.setdefault(name, []).append(str(task_run.state.name if task_run.state else None))
    return {name: sorted(found) for name, found in states.items()}


def _artifacts(key: str) -> list[Artifact]:
    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )


def _artifacts_of(run: UUID) -> list[Artifact]:
    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run]))
        )


def _rows(artifact: Artifact) -> list[dict[str, Any]]:
    data = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    assert isinstance(data, list)
    return data


def _finished_pipeline_run(deployed: Stack, tmp_path: Path) -> FlowRun:
    """The module's first completed pipeline run (the resumed one), or a new quick one."""
    with get_client(sync_client=True) as client:
        done = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["batchline-pipeline"])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.COMPLETED]))
            ),
            sort=FlowRunSort.START_TIME_ASC,
            limit=1,
        )
    if done:
        return done[0]
    write_documents(tmp_path / "docs", 3)
    run = _start(
        PIPELINE,
        source=str(tmp_path / "docs"),
        output=str(tmp_path / "out"),
        credentials_block=deployed.fast.credentials_block,
        **FAST,
    )
    return _wait_for_run(run, lambda r: bool(r.state and r.state.is_completed()), 240)
