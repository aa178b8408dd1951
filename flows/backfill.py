"""Backfill: run the pipeline deployment once per dated partition, a few at a time.

Partition ``date`` reads ``source_template.format(date=date)`` and writes under
``output/date=YYYY-MM-DD``. A partition whose results are written and that has nothing left to
submit is skipped, so a backfill can be started again over the same range to finish what failed.
The pipeline runs are top-level runs (not subflows) so that each can suspend while its batches
process; this flow only polls their states.
"""

from __future__ import annotations

from datetime import date, timedelta
from itertools import islice
from typing import Any
from uuid import UUID

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.futures import PrefectFuture, as_completed
from prefect.runtime import flow_run
from pydantic import BaseModel

from batchline.config import ConfigError, JobConfig
from batchline.storage import OutputLayout, join
from batchline.submit import count_pending
from flows.tasks import job_config_for

PIPELINE_DEPLOYMENT = "batchline-pipeline/batchline-pipeline"


class Partition(BaseModel):
    day: date
    source: str
    output: str


class PartitionOutcome(BaseModel):
    day: date
    output: str
    state: str
    flow_run_id: UUID | None = None


@flow(name="batchline-backfill")
def backfill(
    source_template: str,
    output: str,
    start_date: date,
    end_date: date,
    max_concurrent: int = 2,
    parameters: dict[str, Any] | None = None,
    deployment: str = PIPELINE_DEPLOYMENT,
    poll_interval: float = 30.0,
) -> list[PartitionOutcome]:
    """Run ``deployment`` for each day from ``start_date`` to ``end_date`` (inclusive).

    ``parameters`` go to every pipeline run (model, job_block, credentials_block...); at most
    ``max_concurrent`` partitions run at once.
    """
    settings = parameters or {}
    partitions = plan_partitions(source_template, output, start_date, end_date)
    job = job_config_for(
        settings.get("job_block"),
        **{k: v for k, v in settings.items() if k in JobConfig.model_fields or k == "output_model"},
    )
    outcomes = [
        PartitionOutcome(day=p.day, output=p.output, state="Skipped (complete)")
        for p in partitions
        if partition_complete(p.output, job)
    ]
    skipped = {o.day for o in outcomes}
    todo = iter([p for p in partitions if p.day not in skipped])
    key = flow_run.id or "local"

    def launch(batch: Any) -> list[PrefectFuture[PartitionOutcome]]:
        return [run_partition.submit(deployment, p, settings, poll_interval, key) for p in batch]

    running = launch(islice(todo, max(1, max_concurrent)))
    while running:
        done = next(as_completed(running))
        running.remove(done)
        outcomes.append(done.result())
        running += launch(islice(todo, 1))
    outcomes.sort(key=lambda o: o.day)
    create_table_artifact(
        [o.model_dump(mode="json") for o in outcomes],
        key="batchline-backfill",
        description=f"Backfill of {source_template} from {start_date} to {end_date}",
    )
    failed = [o for o in outcomes if o.state not in ("Completed", "Skipped (complete)")]
    if failed:
        raise RuntimeError(
            f"{len(failed)} partitions did not complete: {[str(o.day) for o in failed]}"
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


@task(name="run-partition", task_run_name="partition-{partition.day}", cache_policy=NO_CACHE)
def run_partition(
    deployment: str,
    partition: Partition,
    parameters: dict[str, Any],
    poll_interval: float,
    backfill_key: str,
) -> PartitionOutcome:
    """Run the pipeline deployment for one partition and wait for its final state.

    The idempotency key makes a retried backfill task find its run instead of starting another.
    """
    run = run_deployment(
        deployment,
        parameters={**parameters, "source": partition.source, "output": partition.output},
        flow_run_name=f"backfill-{partition.day:%Y-%m-%d}",
        tags=["batchline-backfill"],
        idempotency_key=f"{backfill_key}:{partition.output}",
        poll_interval=poll_interval,
        as_subflow=False,  # a subflow could not suspend while its batches process
    )
    assert isinstance(run, FlowRun)  # sync call: the run, not an awaitable
    state = run.state.name if run.state else "Unknown"
    get_run_logger().info("partition %s: run %s ended %s", partition.day, run.name, state)
    return PartitionOutcome(
        day=partition.day, output=partition.output, state=state, flow_run_id=run.id
    )
