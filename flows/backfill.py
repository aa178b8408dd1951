"""Backfill: start (or find) one pipeline run per dated partition, then return.

Partition ``date`` reads ``source_template.format(date=date)`` and writes under
``output/date=YYYY-MM-DD``. A partition whose results are written and that has nothing left to
submit is skipped, so a backfill can be started again over the same range to finish what failed.
The backfill does not wait for its days: each is a top-level pipeline run that suspends while its
batches process and is resumed by its own checks, so no parent holds a process for days and a
server restart strands nothing. The work pool's concurrency limit bounds how many run at once.

A day's runs are keyed (deployment, output, n): the server returns the existing run for a key, so
a rerun finds a day's run in progress instead of starting a second one; only when that run ended
without completing the day does the next n start a new one.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any
from uuid import UUID

from prefect import flow, get_client, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from pydantic import BaseModel

from batchline.config import ConfigError, JobConfig
from batchline.storage import OutputLayout, join
from batchline.submit import count_pending
from flows.names import BACKFILL_FLOW, PIPELINE_FLOW, sibling_deployment
from flows.tasks import job_config_for

# A day whose runs all ended without completing it this many times needs a person, not a rerun.
MAX_RUNS_PER_DAY = 20


class Partition(BaseModel):
    day: date
    source: str
    output: str


class PartitionOutcome(BaseModel):
    day: date
    output: str
    state: str
    flow_run_id: UUID | None = None
    flow_run_name: str | None = None


@flow(name=BACKFILL_FLOW)
def backfill(
    source_template: str,
    output: str,
    start_date: date,
    end_date: date,
    parameters: dict[str, Any] | None = None,
    deployment: str | None = None,
) -> list[PartitionOutcome]:
    """Start the pipeline for each day from ``start_date`` to ``end_date`` (inclusive) not done.

    ``parameters`` go to every pipeline run (model, job_block, credentials_block...).
    ``deployment`` defaults to the pipeline deployment of this backfill's own project.
    """
    settings = parameters or {}
    target = deployment or sibling_deployment(PIPELINE_FLOW)
    partitions = plan_partitions(source_template, output, start_date, end_date)
    job = job_config_for(
        settings.get("job_block"),
        **{k: v for k, v in settings.items() if k in JobConfig.model_fields or k == "output_model"},
    )
    outcomes = [
        PartitionOutcome(day=p.day, output=p.output, state="Skipped (complete)")
        if partition_complete(p.output, job)
        else start_partition(target, p, settings, job)
        for p in partitions
    ]
    create_table_artifact(
        [o.model_dump(mode="json") for o in outcomes],
        key="batchline-backfill",
        description=f"Backfill of {source_template} from {start_date} to {end_date}",
    )
    return outcomes


def plan_partitions(
    source_template: str, output: str, start_date: date, end_date: date
) -> list[Partition]:
    """One partition a day, each with its own source and its own ``date=`` output folder."""
    if "{date" not in source_template:
        raise ConfigError(f"source_template {source_template!r} must contain {{date:...}}")
    if end_date < start_date:
        raise ConfigError(f"end_date {end_date} is before start_date {start_date}")
    root = OutputLayout(output).root
    days = [start_date + timedelta(days=n) for n in range((end_date - start_date).days + 1)]
    return [
        Partition(
            day=day,
            source=source_template.format(date=day),
            output=join(root, f"date={day:%Y-%m-%d}"),
        )
        for day in days
    ]


def partition_complete(output: str, job: JobConfig) -> bool:
    """Results are written and no request would be submitted again."""
    layout = OutputLayout(output)
    return bool(layout.names("results", ".parquet")) and count_pending(layout, job) == 0


@task(name="start-partition", task_run_name="partition-{partition.day}", cache_policy=NO_CACHE)
def start_partition(
    deployment: str, partition: Partition, parameters: dict[str, Any], job: JobConfig
) -> PartitionOutcome:
    """The day's pipeline run still in progress, or a new one; never a second one in progress.

    Run n of a day has idempotency key (deployment, output, n): asking for it returns the run
    that key already made, if any. The first key whose run has not ended (or did not exist) wins,
    or whose run completed the day: it may have finished after the backfill found the day open.
    """
    logger = get_run_logger()
    with get_client(sync_client=True) as client:
        deployment_id = client.read_deployment_by_name(deployment).id
    for n in range(MAX_RUNS_PER_DAY):
        run = run_deployment(
            deployment_id,
            parameters={**parameters, "source": partition.source, "output": partition.output},
            flow_run_name=f"backfill-{partition.day:%Y-%m-%d}" + (f"-{n}" if n else ""),
            tags=["batchline-backfill"],
            idempotency_key=f"{deployment_id}:{partition.output}:{n}",
            timeout=0,
            as_subflow=False,  # a subflow could not suspend while its batches process
        )
        assert isinstance(run, FlowRun)  # sync call: the run, not an awaitable
        state = run.state.name if run.state else "Unknown"
        completed = bool(run.state and run.state.is_completed())
        if not (run.state and run.state.is_final()) or (
            completed and partition_complete(partition.output, job)
        ):
            logger.info("partition %s: run %s is %s", partition.day, run.name, state)
            return PartitionOutcome(
                day=partition.day,
                output=partition.output,
                state=state,
                flow_run_id=run.id,
                flow_run_name=run.name,
            )
        logger.info(
            "partition %s: run %s ended %s; starting another", partition.day, run.name, state
        )
    raise RuntimeError(
        f"partition {partition.day}: {MAX_RUNS_PER_DAY} runs ended without completing it; "
        f"look at their logs, fix the cause, then start the backfill again"
    )
