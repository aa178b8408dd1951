"""Names of one project's deployments, so that two projects can share a Prefect server.

prefect.yaml names each deployment ``<prefix><flow name>``, the prefix read from
``BATCHLINE_PROJECT`` at deploy time (empty by default): ``batchline-pipeline/batchline-pipeline``,
or ``batchline-pipeline/acme-batchline-pipeline`` for ``BATCHLINE_PROJECT=acme-``. A run finds its
project's other deployments from its own deployment's name, so no name is written twice.
"""

from __future__ import annotations

from prefect.runtime import deployment, flow_run

PIPELINE_FLOW = "batchline-pipeline"
CHECK_FLOW = "batchline-check"
BACKFILL_FLOW = "batchline-backfill"
RETRY_FLOW = "retry-failed"
# Every flow a batchline run can be in: a dead process leaves any of them Running.
FLOWS = (PIPELINE_FLOW, CHECK_FLOW, BACKFILL_FLOW, RETRY_FLOW)


def sibling_deployment(flow_name: str) -> str:
    """``flow/deployment`` name of ``flow_name``'s deployment in the current run's project."""
    own: str | None = deployment.name
    if own is None:
        raise RuntimeError("only a run of a deployment knows its project's other deployments")
    if not own.endswith(flow_run.flow_name):
        raise RuntimeError(
            f"deployment {own!r} is not named <prefix>{flow_run.flow_name} as prefect.yaml names it"
        )
    prefix = own.removesuffix(flow_run.flow_name)
    return f"{flow_name}/{prefix}{flow_name}"
