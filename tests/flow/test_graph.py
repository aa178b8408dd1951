"""What a finished run shows through the API: its data flow, and a summary of its own output."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from uuid import UUID

import pytest
from prefect import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
)
from prefect.client.schemas.objects import TaskRun, TaskRunResult

from batchline.emulator import Emulator
from batchline.report import artifact_key
from flows.pipeline import batch_pipeline
from tests.support import write_documents

pytestmark = pytest.mark.usefixtures("prefect_server")


def _upstream(run: TaskRun) -> set[UUID]:
    return {
        i.id for inputs in run.task_inputs.values() for i in inputs if isinstance(i, TaskRunResult)
    }


def test_steps_take_what_the_step_before_returned_and_the_summary_is_the_outputs_own(
    tmp_path: Path, emulator_factory: Callable[..., Emulator], api_env: Callable[[Emulator], None]
) -> None:
    api_env(emulator_factory())
    write_documents(tmp_path / "docs", 5)

    state = batch_pipeline(
        source=str(tmp_path / "docs"),
        output=str(tmp_path / "out"),
        poll_interval=0.1,
        max_poll_interval=0.5,
        return_state=True,
    )

    assert state.is_completed()
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    (submit,) = [r for r in runs if r.name == "submit-new-1"]
    (wait,) = [r for r in runs if r.name.startswith("wait-")]
    (plan_write,) = [r for r in runs if r.name.startswith("plan-write-")]
    collects = [r for r in runs if r.name.startswith("collect-")]
    for combine, mapped in (
        ("load-documents-", "load-shard-"),
        ("build-requests-", "build-part-"),
        ("write-parquet-", "write-batch-"),
    ):
        (step,) = [r for r in runs if r.name.startswith(combine)]
        shards = {r.id for r in runs if r.name.startswith(mapped)}
        assert shards and shards <= _upstream(step), step.task_inputs
    assert submit.id in _upstream(wait), wait.task_inputs
    assert collects and all(submit.id in _upstream(c) for c in collects), collects[0].task_inputs
    assert all(wait.id in _upstream(c) for c in collects), collects[0].task_inputs
    assert {c.id for c in collects} <= _upstream(plan_write), plan_write.task_inputs
    by_key = {a.key: a for a in artifacts}
    summary = by_key[artifact_key("batchline-summary", str(tmp_path / "out"))]
    assert summary.type == "markdown" and "| succeeded | 5 |" in str(summary.data)
    link = by_key[artifact_key("batchline-output", str(tmp_path / "out"))]
    assert (tmp_path / "out" / "results").as_uri() in str(link.data)
