"""The batchline pipeline: load → build → submit → wait → collect → retry-failed → write-parquet.

Every step is safe to run again from the top: cached steps come back Cached, and the submit
ledger under the output root makes sure nothing already paid for is submitted twice. That is what
lets a deployed run suspend while its batches process and replay from the top when resumed.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import count
from typing import Any, ParamSpec, TypeVar

from prefect import Flow, flow, get_run_logger, unmapped
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.context import FlowRunContext
from prefect.filesystems import WritableFileSystem
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from batchline.build import BuildSummary, check_submittable
from batchline.collect import CollectedBatch
from batchline.config import DEFAULT_MODEL, MAX_REQUESTS_PER_BATCH, JobConfig, SourceOptions
from batchline.load import LoadSummary, check_source_and_output
from batchline.lock import output_lock
from batchline.models import ModelTable, check_run_model
from batchline.report import artifact_key, results_link, summary_markdown
from batchline.retry import Submission
from batchline.storage import OutputLayout, claim_output
from batchline.submit import any_pending
from batchline.write import RunSummary
from flows.names import RETRY_FLOW
from flows.progress import batches_to_wait_for, outstanding_batch_ids
from flows.storage import result_storage_for
from flows.suspend import approve_spend, is_deployed, suspend_until_ended
from flows.tasks import (
    Waited,
    build_requests,
    build_requests_of,
    client_for,
    collect,
    job_config_for,
    load_documents,
    load_shard,
    look_up_models,
    plan_building,
    plan_loading,
    plan_writing,
    submit,
    wait,
    write_parquet,
    write_results_part,
)

P = ParamSpec("P")
R = TypeVar("R")


# Mapped tasks run on threads of this process unless a cluster runs them (flows/dask_pipeline.py).
# Prefect's default pool has no bound, so every load shard would be read at once; a few threads
# keep memory to a few shards (each at most READ_AHEAD_BYTES fetched) and still fetch, build and
# collect several at a time.
LOCAL_THREADS = 4


# TaskRunner is invariant in its future type, of which the thread pool's is a subclass.
@flow(name="batchline-pipeline", task_runner=ThreadPoolTaskRunner(max_workers=LOCAL_THREADS))  # type: ignore[arg-type]
def batch_pipeline(
    source: str,
    output: str,
    model: str = DEFAULT_MODEL,
    max_tokens: int = 1024,
    template: str = "{text}",
    system: str | None = None,
    output_schema: dict[str, Any] | str | None = None,
    output_model: str | None = None,
    retry_invalid_output: bool = False,
    retry_canceled: bool = False,
    max_attempts: int = 3,
    poll_interval: float = 10.0,
    max_poll_interval: float = 300.0,
    max_cost_usd: float | None = None,
    dry_run: bool = False,
    id_column: str = "id",
    text_column: str = "text",
    model_column: str = "model",
    max_tokens_column: str = "max_tokens",
    system_column: str = "system",
    temperature_column: str = "temperature",
    shard_size: int = 10_000,
    batch_size: int = MAX_REQUESTS_PER_BATCH,
    max_batches_in_flight: int = 2,
    credentials_block: str | None = None,
    job_block: str | None = None,
    suspend_after_seconds: float = 300.0,
) -> RunSummary | BuildSummary:
    """Run every document of ``source`` through the Message Batches API into ``output``/results.

    The API key comes from ``credentials_block`` or the environment, never from a parameter. A
    run holds ``output``'s lock (batchline/lock.py): another run on it waits, then refuses. The
    descriptions below are the UI's parameter form and `batchline run --help` alike.

    Args:
        source: Folder of .txt/.md files, or a .jsonl/.csv/.parquet file or folder of them;
            local or s3://.
        output: Output root, local or s3://; the results are at OUTPUT/results.
        model: Model id, looked up through the Models API before anything is loaded.
        max_tokens: max_tokens of every request, at most the model's limit.
        template: User message, a format string over the document: {text}, {doc_id}, any
            other column.
        system: System prompt, sent with cache_control so the prompt cache takes it.
        output_schema: JSON Schema every reply must match (a .json path, local or s3://, or
            the schema itself); its top-level fields become typed results columns, and a reply
            that does not match becomes an invalid_output row.
        output_model: package.module:Model, a Pydantic model giving that schema, instead of
            output_schema.
        retry_invalid_output: Resubmit replies that did not parse or match the schema (each
            attempt is paid for).
        retry_canceled: Resubmit requests that a cancel stopped (batchline cancel), to resume
            a run paused that way.
        max_attempts: Submissions per request, counting the first; only retryable failures
            are resubmitted.
        poll_interval: Shortest wait between polls of the batches, in seconds; the wait is a
            fifth of the oldest running batch's age.
        max_poll_interval: Longest wait between polls of the batches, in seconds.
        max_cost_usd: Refuse to submit when the worst-case cost at batch prices is above this.
        dry_run: Load, build and price the requests; submit nothing.
        id_column: Column of tabular sources holding the document id.
        text_column: Column of tabular sources holding the document text.
        model_column: Column of tabular sources overriding a row's model.
        max_tokens_column: Column of tabular sources overriding a row's max_tokens.
        system_column: Column of tabular sources overriding a row's system prompt.
        temperature_column: Column of tabular sources overriding a row's temperature.
        shard_size: Documents per shard; bounds the memory of load and build.
        batch_size: Requests per batch, at most 100,000 (and 256 MB, always enforced).
        max_batches_in_flight: Batches submitted but not yet collected, at most.
        credentials_block: Name of a saved AnthropicCredentials block, instead of the
            environment's ANTHROPIC_API_KEY.
        job_block: Name of a saved BatchJob block; replaces model, max_tokens, template,
            system, the output schema and max_attempts.
        suspend_after_seconds: From a deployment, a run whose batches still process after
            this long suspends until they end.
    """
    job = job_config_for(
        job_block,
        model=model,
        max_tokens=max_tokens,
        template=template,
        system=system,
        output_schema=output_schema,
        output_model=output_model,
        retry_invalid_output=retry_invalid_output,
        retry_canceled=retry_canceled,
        max_attempts=max_attempts,
        poll_interval=poll_interval,
        max_poll_interval=max_poll_interval,
        max_cost_usd=max_cost_usd,
        max_requests_per_batch=batch_size,
        max_batches_in_flight=max_batches_in_flight,
        model_column=model_column,
        max_tokens_column=max_tokens_column,
        system_column=system_column,
        temperature_column=temperature_column,
    )
    options = SourceOptions(id_column=id_column, text_column=text_column, shard_size=shard_size)
    check_source_and_output(source, output)  # before claim_output: a typo must claim nothing
    # No key, or a model no request could use (unknown, retired, no batches, max_tokens over
    # its limit): fail before loading anything. The Models API is free, so dry runs ask it too.
    models = check_run_model(client_for(credentials_block), job)
    layout = OutputLayout(output)
    with output_lock(layout, f"flow run {flow_run.name} ({flow_run.id})", logger=get_run_logger()):
        claim_output(layout, source, job.request_fingerprint())
        storage = result_storage_for(layout)
        give_up_after = suspend_after_seconds if is_deployed() else None

        loaded = load_source(source, layout.root, options, storage)
        models = look_up_models(layout.root, job, models, credentials_block)
        built = build_manifest(layout.root, job, loaded, models, storage)
        if dry_run:
            check_submittable(built, job)
            get_run_logger().info("dry run: %s", built.model_dump_json())
            return built
        approve_spend(built, job)
        run = Rounds(layout.root, job, built, storage, credentials_block, give_up_after)
        done = run.until_done("new")
        if done.still_running is None and any_pending(layout, job, "retry"):
            done = done.then(on_this_task_runner(retry_failed)(run))
        running = done.still_running
        if running is not None and running.expires_at is not None:
            suspend_until_ended(running.batch_ids, running.expires_at)  # exits here
        summary = write_results(layout.root, done.collected, job.output_schema, storage)
        publish_summary(layout.root, summary, job.max_attempts)
        return summary


def load_source(
    source: str, output: str, options: SourceOptions, storage: WritableFileSystem
) -> LoadSummary:
    """plan → one load task per shard, spread over the task runner's workers → combine, stamp."""
    plan = plan_loading(source, output, options)
    staged = load_shard.map(unmapped(source), unmapped(output), unmapped(options), plan.shards)
    # A shard's error (a missing column, say) is raised here as itself: handed on as a failed
    # future, the combining step would only be NotReady and the run would fail on a None later.
    staged.result()
    # The futures themselves, not their results: the graph then shows each shard feeding in.
    return load_documents.with_options(result_storage=storage)(
        output,
        plan.fingerprint,
        staged,  # type: ignore[arg-type]
    )


def build_manifest(
    output: str,
    job: JobConfig,
    loaded: LoadSummary,
    models: ModelTable,
    storage: WritableFileSystem,
) -> BuildSummary:
    """plan → one build task per staged part, over the workers → sum up, stamp."""
    plan = plan_building(output, job, loaded, models)
    parts = build_requests_of.map(unmapped(output), unmapped(job), unmapped(models), plan.parts)
    parts.result()  # as in load_source: a part's error as itself
    return build_requests.with_options(result_storage=storage)(
        output,
        plan,
        parts,  # type: ignore[arg-type]
    )


def write_results(
    output: str,
    collected: list[CollectedBatch],
    output_schema: dict[str, Any] | None,
    storage: WritableFileSystem,
) -> RunSummary:
    """plan → one write task per results part, over the workers → add up, stamp."""
    plan = plan_writing(output, collected)
    parts = write_results_part.map(unmapped(output), plan.parts, unmapped(output_schema))
    parts.result()  # as in load_source: a part's error as itself
    return write_parquet.with_options(result_storage=storage)(
        output,
        plan,
        parts,  # type: ignore[arg-type]
        output_schema,
    )


@dataclass(frozen=True)
class Done:
    """What rounds left behind: the batches they collected, and those still processing."""

    collected: list[CollectedBatch]
    still_running: Waited | None = None

    def then(self, later: Done) -> Done:
        """This, followed by ``later`` rounds: all they collected, what ``later`` left running."""
        return Done([*self.collected, *later.collected], later.still_running)


@dataclass(frozen=True)
class Rounds:
    """submit → wait → collect, round after round, until no request of a kind is pending."""

    output: str
    job: JobConfig
    built: BuildSummary
    storage: WritableFileSystem
    credentials: str | None
    give_up_after: float | None

    def until_done(self, kind: Submission) -> Done:
        """Run rounds; stop early when waiting gave up (deployed runs), saying what still runs."""
        layout = OutputLayout(self.output)
        collected: list[CollectedBatch] = []
        for number in count(1):
            # Batches a killed run left in flight are waited for and collected like new ones.
            if not any_pending(layout, self.job, kind) and not outstanding_batch_ids(layout):
                return Done(collected)
            submitted = submit.with_options(result_storage=self.storage)(
                self.output, self.job, self.built, kind, number, self.credentials
            )
            batch_ids = batches_to_wait_for(layout, submitted)
            waited = wait(batch_ids, self.job, self.credentials, self.give_up_after)
            if not waited.ended:
                return Done(collected, still_running=waited)
            collecting = collect.with_options(result_storage=self.storage).map(
                unmapped(self.output),
                waited.batch_ids,
                unmapped(self.credentials),
                unmapped(self.job.output_schema),
            )
            collected += collecting.result()
        raise AssertionError("unreachable: count() never ends")


@flow(name=RETRY_FLOW)
def retry_failed(run: Rounds) -> Done:
    """Resubmit errored-retryable and expired requests with their original params.

    Returns what it collected, and the batches still processing when a deployed run should
    suspend (a subflow cannot suspend itself, so its parent does, and the replay after resume
    comes back here).
    """
    return run.until_done("retry")


def on_this_task_runner(subflow: Flow[P, R]) -> Flow[P, R]:
    """The subflow on the running flow's task runner (a subflow would start a default one).

    The Dask runner's copy connects to the running cluster (flows/dask_pipeline.py), so retries
    use the same workers.
    """
    context = FlowRunContext.get()
    if context is None or context.task_runner is None:
        return subflow
    return subflow.with_options(task_runner=context.task_runner.duplicate())


def publish_summary(output_root: str, summary: RunSummary, max_attempts: int) -> None:
    """The run's summary and a link to its results, under keys of this output alone."""
    create_markdown_artifact(
        summary_markdown(summary, max_attempts),
        key=artifact_key("batchline-summary", output_root),
        description=f"Rows, tokens and cost of {output_root}",
    )
    url, text = results_link(summary.output)
    create_link_artifact(
        url,
        link_text=text,
        key=artifact_key("batchline-output", output_root),
        description=f"Results of {output_root}",
    )
