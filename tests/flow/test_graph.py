"""The run graph carries the data: each step takes what the step before it returned."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from uuid import UUID

import pytest
from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import TaskRun, TaskRunResult

from batchline.emulator import Emulator
from flows.pipeline import batch_pipeline
from tests.support import write_documents

pytestmark = pytest.mark.usefixtures("prefect_server")


def _upstream(run: TaskRun) -> set[UUID]:
    return {
        i.id for inputs in run.task_inputs.values() for i in inputs if isinstance(i, TaskRunResult)
    }


def test_wait_collect_and_write_take_their_inputs_from_the_steps_before(
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
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
            )
        )
    (submit,) = [r for r in runs if r.name == "submit-new-1"]
    (wait,) = [r for r in runs if r.name.startswith("wait-")]
    (write,) = [r for r in runs if r.name.startswith("write-parquet-")]
    collects = [r for r in runs if r.name.startswith("collect-")]
    assert submit.id in _upstream(wait), wait.task_inputs
    assert collects and all(submit.id in _upstream(c) for c in collects), collects[0].task_inputs
    assert all(wait.id in _upstream(c) for c in collects), collects[0].task_inputs
    assert {c.id for c in collects} <= _upstream(write), write.task_inputs
