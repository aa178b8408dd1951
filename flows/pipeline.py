"""The batchline pipeline: load → build → submit → wait → collect → retry → write Parquet.

Every step is safe to run again from the top: cached steps come back Cached, and the submit
ledger under the output root makes sure nothing already paid for is submitted twice.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_table_artifact

from batchline.build import BuildSummary, check_submittable
from batchline.config import DEFAULT_MODEL, JobConfig, SourceOptions
from batchline.ledger import Ledger
from batchline.storage import OutputLayout, claim_output
from batchline.submit import count_pending
from batchline.write import RunSummary
from flows.storage import result_storage_for
from flows.tasks import (
    build_requests,
    client_for,
    collect,
    load_documents,
    submit,
    wait,
    write_parquet,
)


@flow(name="batchline-pipeline")
def batch_pipeline(
    source: str,
    output: str,
    model: str = DEFAULT_MODEL,
    max_tokens: int = 1024,
    template: str = "{text}",
    system: str | None = None,
    max_attempts: int = 3,
    poll_interval: float = 10.0,
    max_poll_interval: float = 300.0,
    max_cost_usd: float | None = None,
    dry_run: bool = False,
    id_column: str = "id",
    text_column: str = "text",
    shard_size: int = 10_000,
    credentials_block: str | None = None,
) -> RunSummary | BuildSummary:
    """Run every document of ``source`` through the Message Batches API into ``output``/results.

    The API key comes from ``credentials_block`` (a saved AnthropicCredentials) or the
    environment, never from a parameter.
    """
    job = JobConfig(
        model=model,
        max_tokens=max_tokens,
        template=template,
        system=system,
        max_attempts=max_attempts,
        poll_interval=poll_interval,
        max_poll_interval=max_poll_interval,
        max_cost_usd=max_cost_usd,
    )
    options = SourceOptions(id_column=id_column, text_column=text_column, shard_size=shard_size)
    if not dry_run:
        client_for(credentials_block)  # no key: fail before loading anything
    layout = OutputLayout(output)
    claim_output(layout, source, job.request_fingerprint())
    storage = result_storage_for(layout)

    loaded = load_documents.with_options(result_storage=storage)(source, layout.root, options)
    built = build_requests.with_options(result_storage=storage)(layout.root, job, loaded)
    check_submittable(built, job)
    if dry_run:
        get_run_logger().info("dry run: %s", built.model_dump_json())
        return built
    submit.with_options(result_storage=storage)(layout.root, job, built, 1, credentials_block)
    ended = wait(layout.root, job, credentials_block)
    collect.with_options(result_storage=storage)(layout.root, ended, credentials_block)
    retry_failed(layout.root, job, built, storage, credentials_block)
    batch_ids = [e.batch_id for e in Ledger(layout).entries() if e.batch_id]
    summary = write_parquet.with_options(result_storage=storage)(layout.root, built, batch_ids)
    publish_summary(summary)
    return summary


@flow(name="retry-failed")
def retry_failed(
    output: str, job: JobConfig, built: BuildSummary, storage: str, credentials_block: str | None
) -> int:
    """Resubmit retryable errored and expired requests with their original params.

    Returns how many retry batches ran. Each pass is its own submit → wait → collect.
    """
    logger = get_run_logger()
    passes = 0
    for attempt in range(2, job.max_attempts + 1):
        pending = count_pending(OutputLayout(output), job)
        if not pending:
            break
        logger.info("attempt %d: %d requests to retry", attempt, pending)
        submit.with_options(result_storage=storage)(output, job, built, attempt, credentials_block)
        ended = wait(output, job, credentials_block)
        collect.with_options(result_storage=storage)(output, ended, credentials_block)
        passes += 1
    return passes


def publish_summary(summary: RunSummary) -> None:
    """The run's summary table and output location as Prefect artifacts."""
    rows = [{"status": status, "rows": n} for status, n in sorted(summary.by_status.items())]
    rows += [{"status": f"tokens: {k}", "rows": v} for k, v in sorted(summary.tokens.items())]
    rows.append({"status": "cost at batch prices (USD)", "rows": summary.cost_usd})
    rows.append({"status": "cost at standard prices (USD)", "rows": summary.standard_cost_usd})
    rows.append({"status": "batches", "rows": summary.batches})
    create_table_artifact(rows, key="batchline-summary", description="Rows, tokens and cost")
    create_link_artifact(summary.output, link_text="results (Parquet)", key="batchline-output")
