"""The sentinel: resumes suspended pipeline runs once their batches have ended.

Prefect has no timed auto-resume, so a deployed pipeline run that suspends while its batches
process is woken by this small flow on an interval schedule. It checks each suspended run's
batches with one retrieve per batch, moves the run's progress artifact, and resumes the run only
when every batch has ended (or is past its expiry, which the API ends by itself). Two sentinels
at once are harmless: Prefect resumes a paused run once and refuses the second resume.
"""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

from prefect import flow, get_client, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateName,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.exceptions import NotPausedError
from prefect.flow_runs import resume_flow_run
from pydantic import BaseModel

from batchline.storage import OutputLayout
from batchline.wait import retrieve_all
from flows.progress import (
    describe,
    latest_progress_artifact,
    outstanding_batch_ids,
    update_progress,
)
from flows.suspend import WAIT_KEY_PREFIX
from flows.tasks import client_for


class SuspendedRun(BaseModel):
    """A pipeline run suspended while its batches process: where its ledger is, how to ask."""

    flow_run_id: UUID
    name: str
    output: str
    credentials_block: str | None = None


class RunCheck(BaseModel):
    """What the sentinel found for one suspended run."""

    flow_run_id: UUID
    flow_run_name: str
    batches: int
    ended: int
    ready: bool


@flow(name="batchline-sentinel")
def resume_finished_runs(flow_name: str = "batchline-pipeline") -> list[RunCheck]:
    """Check every run of ``flow_name`` suspended for its batches; resume those that are done."""
    checks = [check_batches(run) for run in find_suspended_runs(flow_name)]
    for check in checks:
        if check.ready:
            resume_run(check.flow_run_id)
    if checks:
        create_table_artifact(
            [c.model_dump(mode="json") for c in checks],
            key="batchline-sentinel",
            description="Suspended runs checked and whether their batches have ended",
        )
    return checks


@task(name="find-suspended-runs", cache_policy=NO_CACHE)
def find_suspended_runs(flow_name: str) -> list[SuspendedRun]:
    """Runs suspended while waiting for batches; approvals wait for a person, not for us."""
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(
                    type=FlowRunFilterStateType(any_=[StateType.PAUSED]),
                    name=FlowRunFilterStateName(any_=["Suspended"]),
                )
            ),
        )
    return [
        SuspendedRun(
            flow_run_id=run.id,
            name=run.name,
            output=run.parameters["output"],
            credentials_block=run.parameters.get("credentials_block"),
        )
        for run in runs
        if _waiting_for_batches(run)
    ]


@task(name="check-batches", task_run_name="check-{run.name}", cache_policy=NO_CACHE)
def check_batches(run: SuspendedRun) -> RunCheck:
    """One retrieve per outstanding batch of the run; updates the run's progress artifact."""
    logger = get_run_logger()
    layout = OutputLayout(run.output)
    batches = retrieve_all(client_for(run.credentials_block), outstanding_batch_ids(layout))
    now = datetime.now(UTC)
    ended = [b for b in batches.values() if b.processing_status == "ended" or b.expires_at < now]
    for batch in batches.values():
        logger.info("%s: %s", run.name, describe(batch))
    artifact = latest_progress_artifact(run.flow_run_id)
    if artifact is not None and batches:
        update_progress(artifact, batches)
    return RunCheck(
        flow_run_id=run.flow_run_id,
        flow_run_name=run.name,
        batches=len(batches),
        ended=len(ended),
        ready=len(ended) == len(batches),
    )


@task(name="resume-run", cache_policy=NO_CACHE)
def resume_run(flow_run_id: UUID) -> bool:
    """Resume a suspended run; False when someone (another sentinel, a person) already did."""
    try:
        resume_flow_run(flow_run_id)
    except NotPausedError:
        get_run_logger().info("run %s is no longer paused: already resumed", flow_run_id)
        return False
    get_run_logger().info("resumed run %s: its batches have ended", flow_run_id)
    return True


def _waiting_for_batches(run: FlowRun) -> bool:
    details = run.state.state_details if run.state else None
    return bool(
        details
        and details.pause_key
        and details.pause_key.startswith(WAIT_KEY_PREFIX)
        and "output" in run.parameters
    )
