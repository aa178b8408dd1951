"""A run's summary as a person reads it: markdown for the Prefect UI, with a link that opens.

Plain Python over a RunSummary, so the flow only publishes what this renders.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from batchline.retry import RETRYABLE_ERROR_TYPES
from batchline.wording import counted
from batchline.write import RunSummary

_TOKEN_NAMES = {
    "input_tokens": "input",
    "output_tokens": "output",
    "cache_creation_input_tokens": "written to the prompt cache",
    "cache_creation_1h_input_tokens": "of which cached for an hour",
    "cache_read_input_tokens": "read from the prompt cache",
}


def artifact_key(prefix: str, output_root: str) -> str:
    """``prefix`` plus a short hash of the output root: one key per output (and backfill day).

    Artifact keys allow lowercase letters, digits and dashes only, so the root itself cannot be
    the key; the hash keeps each output's versions together and apart from every other output's.
    """
    return f"{prefix}-{hashlib.sha256(output_root.encode()).hexdigest()[:12]}"


def openable_url(url: str) -> str:
    """A URL a browser can follow: file:// for a local path; other URLs (s3://) as they are."""
    return url if "://" in url else Path(url).absolute().as_uri()


def results_link(results: str) -> tuple[str, str]:
    """The results' URL and the text of a link to it, which says when no browser can follow it."""
    url = openable_url(results)
    if url.startswith("file://"):
        return url, "results (Parquet)"
    return url, f"results (Parquet) at {url}: not a web address, no browser opens it"


def summary_markdown(summary: RunSummary, max_attempts: int) -> str:
    """The run's rows by status, tokens, cost, batches, where the results are, what to fix."""
    lines = [
        f"## {counted(summary.rows, 'row')} from {counted(summary.batches, 'batch')}",
        "",
        "| status | rows |",
        "| --- | ---: |",
        *(f"| {status} | {n:,} |" for status, n in _succeeded_first(summary.by_status)),
        "",
        "| tokens | count |",
        "| --- | ---: |",
        *(
            f"| {name} | {summary.tokens.get(column, 0):,} |"
            for column, name in _TOKEN_NAMES.items()
        ),
        "",
        _cost_line(summary),
        "",
        _where_line(summary.output),
    ]
    advice = _advice(summary, max_attempts)
    if advice:
        lines += ["", "### Rows that did not succeed", "", *advice]
    return "\n".join(lines) + "\n"


def _succeeded_first(by_status: dict[str, int]) -> list[tuple[str, int]]:
    return sorted(by_status.items(), key=lambda item: (item[0] != "succeeded", item[0]))


def _cost_line(summary: RunSummary) -> str:
    if summary.cost_usd is None or summary.standard_cost_usd is None:
        models = ", ".join(f"`{m}`" for m in summary.unpriced_models)
        return f"**Cost:** unknown: no price for {models} in batchline/data/prices.json."
    saved = summary.standard_cost_usd - summary.cost_usd
    return (
        f"**Cost:** ${summary.cost_usd:,.4f} at batch prices "
        f"(${summary.standard_cost_usd:,.4f} at standard prices: ${saved:,.4f} saved)."
    )


def _where_line(results: str) -> str:
    if results.startswith("s3://"):
        return (
            f"**Results:** `{results}` (Parquet). An s3:// URL opens in no browser, and the S3 "
            "console's address for it depends on your account and region; read it with "
            f'`pandas.read_parquet("{results}")` or list it with `aws s3 ls {results}/`.'
        )
    url = openable_url(results)
    return f'**Results:** [{url}]({url}) (Parquet): `pandas.read_parquet("{results}")`.'


def _advice(summary: RunSummary, max_attempts: int) -> list[str]:
    """One bullet per kind of row that did not succeed, saying what would change its outcome."""
    again = (
        f"already submitted {max_attempts} times (`--max-attempts`, the `max_attempts` "
        "parameter); run again with a higher value to resubmit only these"
    )
    advice = []
    for error_type, n in sorted(summary.error_types.items()):
        if error_type in RETRYABLE_ERROR_TYPES:
            advice.append(f"- {n:,} errored with `{error_type}`, which can pass later: {again}.")
        elif error_type == "invalid_request_error":
            advice.append(
                f"- {n:,} errored with `invalid_request_error`: the API refused the request "
                "itself, so it fails the same way until the request changes (template, "
                "`max_tokens`, model, system prompt); `error_message` says what is wrong."
            )
        else:
            advice.append(
                f"- {n:,} errored with `{error_type}`, which a resubmission does not cure "
                "(check the key, permissions and model); `error_message` has the API's words."
            )
    by_status = summary.by_status
    if n := by_status.get("expired", 0):
        advice.append(f"- {n:,} expired before the API processed them: {again}.")
    if n := by_status.get("invalid_output", 0):
        advice.append(
            f"- {n:,} replies did not match the output schema (`error_message` says how); "
            "`--retry-invalid-output` resubmits them, each attempt paid for."
        )
    if n := by_status.get("invalid", 0):
        advice.append(
            f"- {counted(n, 'document')} could not become a request (empty, binary, too large, a "
            "duplicate...; `error_message` says which): fix the documents and run again."
        )
    if n := by_status.get("canceled", 0):
        advice.append(f"- {n:,} were canceled at the API (their batch was canceled).")
    return advice
