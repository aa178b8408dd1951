"""How a deployed run lets go of its worker: suspended while its batches run, or until a person
approves a cost over budget in the UI. Run directly (the CLI, tests), the run polls and refuses.

A suspended run exits its process; when resumed it replays from the top, its finished steps come
back Cached, and a suspend whose key has already fired returns at once (with the input, if any).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

from prefect import get_client, get_run_logger
from prefect.client.schemas.objects import FlowRun
from prefect.flow_runs import suspend_flow_run
from prefect.input import RunInput
from prefect.runtime import deployment, flow_run
from pydantic import Field

from batchline.build import BudgetExceeded, BuildSummary, check_submittable
from batchline.config import JobConfig
from batchline.wording import counted
from flows.check import schedule_checks

# A check resumes only runs suspended under this prefix; approvals are a person's to resume.
WAIT_KEY_PREFIX = "batchline-wait-"
APPROVAL_KEY_PREFIX = "batchline-budget-"
# The API ends an expired batch within minutes; the checks then need up to max_poll_interval to
# notice. A run still suspended this long after its last expiry is failed by Prefect.
RESUME_GRACE = timedelta(hours=2)
APPROVAL_TIMEOUT = timedelta(days=7)


class BudgetApproval(RunInput):
    """The form a person fills in the UI to let an over-budget run spend."""

    approve: bool = Field(False, description="Tick to submit the requests; leave to reject.")
    worst_case_usd: float | None = Field(None, description="Worst-case cost at batch prices.")
    budget_usd: float | None = Field(None, description="The run's max_cost_usd.")
    requests: int = Field(0, description="Requests that would be submitted.")
    model: str = Field("", description="Model of every request.")


def is_deployed() -> bool:
    """True when the run came from a deployment, so a worker can start it again after a suspend."""
    return deployment.id is not None


def suspend_until_ended(batch_ids: list[str], expires_at: datetime) -> None:
    """Suspend the current run until a check finds ``batch_ids`` ended; its process exits.

    The key names the batches and counts earlier suspends for them, so a run resumed by hand
    before its batches ended suspends again instead of being let through as already fired.
    The first check is scheduled before the suspend, so no suspended run is left unwatched.
    """
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run.id)
    key = _unfired_key(run, WAIT_KEY_PREFIX + _digest(*sorted(batch_ids)))
    timeout = expires_at - datetime.now(UTC) + RESUME_GRACE
    schedule_checks(run, key, attempt=0)
    get_run_logger().info(
        "batches %s still processing: suspending (key %s) until a check resumes this run",
        ", ".join(batch_ids),
        key,
    )
    suspend_flow_run(key=key, timeout=max(60, int(timeout.total_seconds())))


def approve_spend(built: BuildSummary, job: JobConfig) -> None:
    """Refuse an over-budget run, or, when deployed, wait for a person to approve it in the UI.

    Raises BudgetExceeded when refused or rejected; returns only when spending may go ahead.
    """
    try:
        check_submittable(built, job)
        return
    except BudgetExceeded as exc:
        if not is_deployed():
            raise
        reason = str(exc)
    form = BudgetApproval.with_initial_data(
        description=f"**Budget approval needed.** {reason}.\n\nTick *approve* to submit.",
        worst_case_usd=built.worst_case_cost_usd,
        budget_usd=job.max_cost_usd,
        requests=built.requests,
        model=job.model,
    )
    key = APPROVAL_KEY_PREFIX + _digest(built.fingerprint, job.max_cost_usd)
    get_run_logger().warning("%s: waiting for approval in the UI", reason)
    answer = suspend_flow_run(
        wait_for_input=form, key=key, timeout=int(APPROVAL_TIMEOUT.total_seconds())
    )
    if not answer.approve:
        raise BudgetExceeded(f"{reason}; rejected in the UI")
    get_run_logger().info(
        "spend approved in the UI: submitting %s", counted(built.requests, "request")
    )


def _unfired_key(run: FlowRun, prefix: str) -> str:
    """``prefix`` plus how many suspends under it ``run`` has already had."""
    fired = run.empirical_policy.pause_keys or set()
    return f"{prefix}-{sum(k.startswith(prefix) for k in fired)}"


def _digest(*parts: object) -> str:
    return hashlib.sha256("\0".join(map(str, parts)).encode()).hexdigest()[:16]
