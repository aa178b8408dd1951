"""The check: resumes one suspended pipeline run once its batches have ended.

Prefect has no timed auto-resume, so the suspending run schedules a run of this flow a little
later (flows/suspend.py). A check retrieves the run's batches (one call each), moves its progress
artifact, and either resumes it (every batch ended, or is past its expiry, which the API ends by
itself) or schedules the next check, later each time up to the run's ``max_poll_interval``. Nothing
runs while nothing is suspended. Checks are keyed by (run, suspend key, attempt), so a check run
twice schedules one successor, and a resume that someone else did first is harmless.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from prefect import flow, get_client, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.exceptions import NotPausedError
from prefect.flow_runs import resume_flow_run
from pydantic import BaseModel

from batchline.storage import OutputLayout
from batchline.wait import retrieve_all
from flows.names import CHECK_FLOW, sibling_deployment
from flows.progress import (
    describe,
    latest_progress_artifact,
    outstanding_batch_ids,
    update_progress,
)
from flows.tasks import client_for

# The first check comes this soon after the suspend; each next one twice as late, up to the
# run's max_poll_interval: a 24-hour batch costs about a check per max_poll_interval, not 1,440.
FIRST_CHECK = timedelta(seconds=15)


class CheckOutcome(BaseModel):
    """What one check found and did."""

    flow_run_id: UUID
    batches: int = 0
    ended: int = 0
    action: str


# Retried, since a failed check (an API hiccup) would leave the run suspended until its timeout.
@flow(
    name=CHECK_FLOW,
    flow_run_name="check-{attempt}-{flow_run_id}",
    retries=5,
    retry_delay_seconds=60,
)
def check_suspended_run(flow_run_id: UUID, key: str, attempt: int = 0) -> CheckOutcome:
    """Resume run ``flow_run_id`` (suspended under ``key``) if its batches ended, or check later."""
    run = read_run(flow_run_id)
    fired = key in (run.empirical_policy.pause_keys or set())
    paused_here = bool(
        run.state and run.state.is_paused() and run.state.state_details.pause_key == key
    )
    if (run.state and run.state.is_final()) or (fired and not paused_here):
        # Finished, or resumed already (by an earlier check or a person): nothing to wait for.
        return CheckOutcome(flow_run_id=flow_run_id, action="none: no longer suspended")
    # The next checks exist before this one does anything, so a check lost with its process (a
    # worker or server restart mid-check) leaves the run watched.
    later = schedule_checks(run, key, attempt + 1)
    if not paused_here:
        return CheckOutcome(flow_run_id=flow_run_id, action="rescheduled: not suspended yet")
    batches, ended = count_ended(run.id, run.name, run.parameters)
    if ended < batches:
        return CheckOutcome(
            flow_run_id=flow_run_id, batches=batches, ended=ended, action="rescheduled"
        )
    resume_run(flow_run_id)
    drop_checks(later)
    return CheckOutcome(flow_run_id=flow_run_id, batches=batches, ended=ended, action="resumed")


def schedule_checks(run: FlowRun, key: str, attempt: int) -> list[UUID]:
    """Checks ``attempt`` and ``attempt + 1`` of ``run``, on this project's check deployment.

    Each check is keyed by (run, suspend key, attempt): asking again (the next check, a retried
    one) finds the one scheduled before instead of adding another.
    """
    due = datetime.now(UTC)
    scheduled = []
    for n in (attempt, attempt + 1):
        due += check_delay(n, _max_delay(run))
        check = run_deployment(
            sibling_deployment(CHECK_FLOW),
            parameters={"flow_run_id": str(run.id), "key": key, "attempt": n},
            scheduled_time=due,
            idempotency_key=f"{run.id}:{key}:{n}",
            timeout=0,
            as_subflow=False,
        )
        assert isinstance(check, FlowRun)  # sync call: the run, not an awaitable
        scheduled.append(check.id)
    get_run_logger().info("%s: check %d at %s", run.name, attempt, f"{due:%H:%M:%S}")
    return scheduled


def check_delay(attempt: int, max_delay: timedelta) -> timedelta:
    """How long after its predecessor check ``attempt`` comes: doubling from FIRST_CHECK, capped."""
    return min(FIRST_CHECK * (1 << min(attempt, 20)), max(max_delay, FIRST_CHECK))


def drop_checks(checks: list[UUID]) -> None:
    """Delete checks not started yet: the run is resumed, there is nothing left to check."""
    with get_client(sync_client=True) as client:
        for check in checks:
            run = client.read_flow_run(check)
            if run.state and run.state.is_scheduled():
                client.delete_flow_run(check)


@task(name="read-run", cache_policy=NO_CACHE)
def read_run(flow_run_id: UUID) -> FlowRun:
    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id)


# Takes the run's id, name and parameters: Prefect refuses a FlowRun as a task argument.
@task(name="count-ended", cache_policy=NO_CACHE)
def count_ended(flow_run_id: UUID, name: str, parameters: dict[str, Any]) -> tuple[int, int]:
    """One retrieve per outstanding batch of the run; moves its progress artifact."""
    logger = get_run_logger()
    layout = OutputLayout(parameters["output"])
    client = client_for(parameters.get("credentials_block"))
    batches = retrieve_all(client, outstanding_batch_ids(layout))
    now = datetime.now(UTC)
    ended = [b for b in batches.values() if b.processing_status == "ended" or b.expires_at < now]
    for batch in batches.values():
        logger.info("%s: %s", name, describe(batch))
    artifact = latest_progress_artifact(flow_run_id)
    if artifact is not None and batches:
        update_progress(artifact, batches)
    return len(batches), len(ended)


@task(name="resume-run", cache_policy=NO_CACHE)
def resume_run(flow_run_id: UUID) -> bool:
    """Resume a suspended run; False when someone (a person, a twin check) already did."""
    try:
        resume_flow_run(flow_run_id)
    except NotPausedError:
        get_run_logger().info("run %s is no longer paused: already resumed", flow_run_id)
        return False
    get_run_logger().info("resumed run %s: its batches have ended", flow_run_id)
    return True


def _max_delay(run: FlowRun) -> timedelta:
    return timedelta(seconds=float(run.parameters.get("max_poll_interval", 300.0)))
