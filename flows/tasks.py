"""The pipeline's steps as Prefect tasks: a few lines each over the plain functions of batchline.

Prefect's cache is a shortcut that must agree with the files under the output root, which are the
source of truth. So a step that writes files (load, build, write) keys its record by the content of
its inputs (content hashes, never sizes or times), and the record is trusted only while the stamp
the step left says its files still answer those inputs; otherwise the record is removed, the step
runs, and it rewrites what is stale. Prefect's default
policy would also hash the task's source code (a redeploy during a 24-hour wait would then submit
again), and INPUTS alone would collide across tasks.
"""

from __future__ import annotations

import hashlib
import os
import socket
from datetime import datetime
from typing import Any

from anthropic.types.messages import MessageBatch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from pydantic import BaseModel, Field

from batchline.build import (
    BuildPlan,
    BuildSummary,
    BuiltPart,
    build_part,
    finish_build,
    plan_build,
    requested_models,
)
from batchline.client import make_client
from batchline.collect import CollectedBatch, collect_entry
from batchline.config import ROW_COLUMNS, JobConfig, SourceOptions
from batchline.load import (
    LoadPlan,
    LoadShard,
    LoadSummary,
    StagedShard,
    finish_load,
    plan_load,
    stage_shard,
)
from batchline.models import ModelTable, look_up
from batchline.retry import Submission
from batchline.storage import Area, OutputLayout, stamped_summary
from batchline.structured import load_output_schema
from batchline.submit import submit_pending
from batchline.wait import all_ended, wait_for_batches
from batchline.wording import counted
from batchline.write import (
    ResultsPart,
    RunSummary,
    WritePlan,
    WrittenPart,
    finish_write,
    plan_write,
    write_part,
)
from flows.progress import (
    describe,
    latest_expiry,
    new_progress_artifact,
    update_progress,
)
from flows.retries import OUTAGE_RETRIES, OUTAGE_RETRY_DELAYS, after_an_outage
from flows.storage import forget_result


def _key(*parts: object) -> str:
    return hashlib.sha256("\0".join(map(str, parts)).encode()).hexdigest()


def _stamped_key(step: str, output: str, area: Area, inputs: str) -> str:
    """The step's key, from its inputs; a record under it is trusted only while its stamp holds.

    The key must not depend on whether the step has run (a replay after a suspend looks up the key
    the first execution recorded), so when the files under ``output`` no longer answer ``inputs``
    (deleted, or rewritten by a run with other inputs) the record under the key is removed: the
    step runs and records its result under the same key.
    """
    layout = OutputLayout(output)
    key = _key(step, layout.root, inputs)
    if stamped_summary(layout, area, inputs) is None:
        forget_result(layout, key)
    return key


def _load_key(_: TaskRunContext, p: dict[str, Any]) -> str:
    return _stamped_key("load", p["output"], "documents", p["fingerprint"])


def _build_key(_: TaskRunContext, p: dict[str, Any]) -> str:
    return _stamped_key("build", p["output"], "manifest", p["plan"].fingerprint)


def _submit_key(_: TaskRunContext, p: dict[str, Any]) -> str:
    # Submitting is guarded by the ledger, not by this key: a cached round submits nothing, and
    # the rounds go on while the ledger says requests are pending.
    job = p["job"]
    return _key(
        "submit",
        p["output"],
        p["built"].fingerprint,
        job.retry_policy().fingerprint(),
        job.max_batches_in_flight,
        p["kind"],
        p["round"],
    )


def _collect_key(_: TaskRunContext, p: dict[str, Any]) -> str:
    layout = OutputLayout(p["output"])
    key = _key("collect", layout.root, p["batch_id"])
    if not layout.exists("collected", f"{p['batch_id']}.parquet"):
        forget_result(layout, key)
    return key


def _write_key(_: TaskRunContext, p: dict[str, Any]) -> str:
    return _stamped_key("write", p["output"], "results", p["plan"].inputs)


@task(name="plan-load", cache_policy=NO_CACHE)
def plan_loading(source: str, output: str, options: SourceOptions) -> LoadPlan:
    """The source's shards, or none when the staged documents already answer its content."""
    plan = plan_load(source, OutputLayout(output), options)
    get_run_logger().info(
        "source in %s%s",
        counted(len(plan.shards), "shard"),
        " (already staged)" if plan.staged else "",
    )
    return plan


@task(name="load-shard", task_run_name="load-shard-{shard.index}", cache_policy=NO_CACHE)
def load_shard(source: str, output: str, options: SourceOptions, shard: LoadShard) -> StagedShard:
    """Read one shard of the source; shards are mapped, so they load on every worker at once."""
    staged = stage_shard(source, OutputLayout(output), options, shard)
    get_run_logger().info(
        "loaded shard %d in %s: %s", shard.index, where(), counted(staged.documents, "document")
    )
    return staged


@task(name="load-documents", cache_key_fn=_load_key, persist_result=True)
def load_documents(output: str, fingerprint: str, staged: list[StagedShard]) -> LoadSummary:
    """The staged documents, checked across shards and stamped with the source's fingerprint."""
    summary = finish_load(OutputLayout(output), fingerprint, staged)
    get_run_logger().info(
        "loaded %s into %s of documents/ (%d invalid)",
        counted(summary.documents, "document"),
        counted(summary.shards, "part"),
        summary.invalid,
    )
    return summary


@task(name="look-up-models", cache_policy=NO_CACHE)
def look_up_models(
    output: str, job: JobConfig, known: ModelTable, credentials: str | None
) -> ModelTable:
    """``known`` plus the models the staged rows name in their model column, each looked up once."""
    wanted = requested_models(OutputLayout(output), job)
    structured = job.output_schema is not None
    table = look_up(client_for(credentials), wanted, known=known, structured=structured)
    get_run_logger().info(
        "models: %s",
        {
            m: limits.problem or f"max_tokens {limits.max_tokens}"
            for m, limits in table.models.items()
        },
    )
    return table


@task(name="plan-build", cache_policy=NO_CACHE)
def plan_building(
    output: str, job: JobConfig, loaded: LoadSummary, models: ModelTable
) -> BuildPlan:
    """The staged parts to build, or none when the manifest already answers them."""
    return plan_build(OutputLayout(output), job, loaded.fingerprint, models)


@task(name="build-part", task_run_name="build-{name}", cache_policy=NO_CACHE)
def build_requests_of(output: str, job: JobConfig, models: ModelTable, name: str) -> BuiltPart:
    """Render one staged part's requests; parts are mapped over the workers."""
    built = build_part(OutputLayout(output), job, models, name)
    get_run_logger().info("built %s in %s: %s", name, where(), counted(built.requests, "request"))
    return built


@task(name="build-requests", cache_key_fn=_build_key, persist_result=True)
def build_requests(output: str, plan: BuildPlan, parts: list[BuiltPart]) -> BuildSummary:
    summary = finish_build(OutputLayout(output), plan, parts)
    get_run_logger().info(
        "built %s (%.1f MB), %s %s",
        counted(summary.requests, "request"),
        summary.request_bytes / 1e6,
        counted(summary.invalid, "invalid document"),
        summary.invalid_reasons or "",
    )
    return summary


@task(
    name="submit",
    task_run_name="submit-{kind}-{round}",
    cache_key_fn=_submit_key,
    persist_result=True,
)
def submit(
    output: str,
    job: JobConfig,
    built: BuildSummary,
    kind: Submission,
    round: int,
    credentials: str | None,
) -> list[str]:
    """Submit pending requests of ``kind``; ``round`` numbers the calls, so each has its key."""
    entries = submit_pending(client_for(credentials), OutputLayout(output), job, kind)
    get_run_logger().info(
        "%s requests, round %d: submitted %s", kind, round, counted(len(entries), "batch")
    )
    return [e.batch_id for e in entries if e.batch_id]


class Waited(BaseModel):
    """What a wait saw: the batches it waited for and whether they have all ended."""

    batch_ids: list[str]
    ended: bool
    expires_at: datetime | None = Field(None, description="Last expiry of those still running.")


@task(
    name="wait",
    cache_policy=NO_CACHE,
    retries=OUTAGE_RETRIES,
    retry_delay_seconds=OUTAGE_RETRY_DELAYS,
    retry_condition_fn=after_an_outage,
)
def wait(
    batch_ids: list[str],
    job: JobConfig,
    credentials: str | None,
    give_up_after: float | None = None,
) -> Waited:
    """Wait for ``batch_ids`` to end, at most ``give_up_after`` seconds."""
    if not batch_ids:
        return Waited(batch_ids=[], ended=True)
    logger = get_run_logger()
    artifact = new_progress_artifact()

    def report(batches: dict[str, MessageBatch]) -> None:
        update_progress(artifact, batches)
        for batch in batches.values():
            logger.info(describe(batch))

    batches = wait_for_batches(
        client_for(credentials),
        batch_ids,
        job.poll_interval,
        job.max_poll_interval,
        report,
        give_up_after=give_up_after,
    )
    return Waited(batch_ids=batch_ids, ended=all_ended(batches), expires_at=latest_expiry(batches))


@task(
    name="collect",
    task_run_name="collect-{batch_id}",
    cache_key_fn=_collect_key,
    persist_result=True,
    retries=OUTAGE_RETRIES,
    retry_delay_seconds=OUTAGE_RETRY_DELAYS,
    retry_condition_fn=after_an_outage,
)
def collect(
    output: str,
    batch_id: str,
    credentials: str | None,
    output_schema: dict[str, Any] | None = None,
) -> CollectedBatch:
    """Download one ended batch's results; batches are mapped, so they download concurrently."""
    collected = collect_entry(
        client_for(credentials), OutputLayout(output), batch_id, output_schema=output_schema
    )
    get_run_logger().info("collected %s in %s: %s", batch_id, where(), collected.by_status)
    return collected


@task(name="plan-write", cache_policy=NO_CACHE)
def plan_writing(output: str, collected: list[CollectedBatch]) -> WritePlan:
    """The results parts to write, or none when ``results/`` already answers the inputs."""
    plan = plan_write(OutputLayout(output))
    get_run_logger().info(
        "results in %s from %s (%d collected by this run)%s",
        counted(len(plan.parts), "part"),
        counted(plan.batches, "batch"),
        len(collected),
        " (already written)" if plan.written else "",
    )
    return plan


@task(name="write-part", task_run_name="write-{part.name}", cache_policy=NO_CACHE)
def write_results_part(
    output: str, part: ResultsPart, output_schema: dict[str, Any] | None = None
) -> WrittenPart:
    """Write one results part; parts are mapped over the workers."""
    written = write_part(OutputLayout(output), part, output_schema)
    get_run_logger().info(
        "wrote results part %s in %s: %s", part.name, where(), counted(written.rows, "row")
    )
    return written


@task(name="write-parquet", cache_key_fn=_write_key, persist_result=True)
def write_parquet(
    output: str,
    plan: WritePlan,
    parts: list[WrittenPart],
    output_schema: dict[str, Any] | None = None,
) -> RunSummary:
    """The results table: the parts added up, stale parts dropped, stamped with its inputs."""
    summary = finish_write(OutputLayout(output), plan, parts, output_schema)
    get_run_logger().info(
        "wrote %s from %s to %s: %s",
        counted(summary.rows, "row"),
        counted(summary.batches, "batch"),
        summary.output,
        summary.by_status,
    )
    return summary


# Settings of one run rather than of the job: they come from the flow's parameters even when a
# saved BatchJob supplies the rest.
RUN_SETTINGS = (
    "poll_interval",
    "max_poll_interval",
    "max_cost_usd",
    "max_requests_per_batch",
    "max_batches_in_flight",
    "retry_invalid_output",
    "retry_canceled",
    *ROW_COLUMNS,
)


def job_config_for(
    job_block: str | None,
    output_schema: dict[str, Any] | str | None = None,
    output_model: str | None = None,
    **settings: Any,
) -> JobConfig:
    """The run's JobConfig: from ``settings``, or from a saved BatchJob plus the run settings.

    The output schema (a schema, a .json path, or ``output_model``), the run's or the block's, is
    read and checked here, so a bad one is a ConfigError naming it before anything is loaded.
    """
    if not job_block:
        return JobConfig(**settings, output_schema=load_output_schema(output_schema, output_model))
    from blocks.job import BatchJob

    block = BatchJob.load(job_block)
    assert isinstance(block, BatchJob)  # sync call: the block, not an awaitable
    return block.job_config(**{k: settings[k] for k in RUN_SETTINGS if k in settings})


def where() -> str:
    """This process, as task logs name it: where a step ran on a cluster (host and pid)."""
    return f"process {os.getpid()} on {socket.gethostname()}"


def client_for(credentials: str | None) -> Any:
    """The SDK client: from a saved AnthropicCredentials block, else from the environment."""
    if credentials:
        from blocks.credentials import AnthropicCredentials

        block = AnthropicCredentials.load(credentials)
        return block.get_client()  # type: ignore[union-attr]
    return make_client()
