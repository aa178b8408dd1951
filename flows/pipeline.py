"""The batchline pipeline: load → build → approve → (submit → wait → collect) per attempt → write.

Every step is safe to run again from the top: cached steps come back Cached, and the submit
ledger under the output root makes sure nothing already paid for is submitted twice. That is what
lets a deployed run suspend while its batches process and replay from the top when resumed.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_table_artifact

from batchline.build import BuildSummary, check_submittable
from batchline.config import DEFAULT_MODEL, SourceOptions
from batchline.ledger import Ledger
from batchline.storage import OutputLayout, claim_output
from batchline.submit import count_pending
from batchline.write import RunSummary
from flows.storage import result_storage_for
from flows.suspend import approve_spend, is_deployed, suspend_until_ended
from flows.tasks import (
    build_requests,
    client_for,
    collect,
    job_config_for,
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
    job_block: str | None = None,
    suspend_after_seconds: float = 300.0,
) -> RunSummary | BuildSummary:
    """Run every document of ``source`` through the Message Batches API into ``output``/results.

    The API key comes from ``credentials_block`` (a saved AnthropicCredentials) or the
    environment, never from a parameter. ``job_block`` (a saved BatchJob) replaces model,
    max_tokens, template, system and max_attempts. From a deployment, a run whose batches are
    still processing after ``suspend_after_seconds`` suspends until the sentinel resumes it.
    """
    job = job_config_for(
        job_block,
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
    give_up_after = suspend_after_seconds if is_deployed() else None

    loaded = load_documents.with_options(result_storage=storage)(source, layout.root, options)
    built = build_requests.with_options(result_storage=storage)(layout.root, job, loaded)
    if dry_run:
        check_submittable(built, job)
        get_run_logger().info("dry run: %s", built.model_dump_json())
        return built
    approve_spend(built, job)
    for attempt in range(1, job.max_attempts + 1):
        if attempt > 1 and not count_pending(layout, job):
            break
        submit.with_options(result_storage=storage)(
            layout.root, job, built, attempt, credentials_block
        )
        waited = wait(layout.root, job, credentials_block, give_up_after)
        if not waited.ended and waited.expires_at is not None:
            suspend_until_ended(waited.batch_ids, waited.expires_at)  # the process exits here
        collect.with_options(result_storage=storage)(
            layout.root, waited.batch_ids, credentials_block
        )
    batch_ids = [e.batch_id for e in Ledger(layout).entries() if e.batch_id]
    summary = write_parquet.with_options(result_storage=storage)(layout.root, built, batch_ids)
    publish_summary(summary)
    return summary


def publish_summary(summary: RunSummary) -> None:
    """The run's summary table and output location as Prefect artifacts."""
    rows = [{"status": status, "rows": n} for status, n in sorted(summary.by_status.items())]
    rows += [{"status": f"tokens: {k}", "rows": v} for k, v in sorted(summary.tokens.items())]
    rows.append({"status": "cost at batch prices (USD)", "rows": summary.cost_usd})
    rows.append({"status": "cost at standard prices (USD)", "rows": summary.standard_cost_usd})
    rows.append({"status": "batches", "rows": summary.batches})
    create_table_artifact(rows, key="batchline-summary", description="Rows, tokens and cost")
    create_link_artifact(summary.output, link_text="results (Parquet)", key="batchline-output")
