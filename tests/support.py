"""Helpers shared by the test modules: documents, the CLI in a subprocess, result invariants."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import orjson
import pandas as pd
import pyarrow as pa
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterParentTaskRunId,
    LogFilter,
    LogFilterFlowRunId,
)

from batchline.build import build_manifest
from batchline.collect import write_collected
from batchline.config import DEFAULT_MODEL, JobConfig, SourceOptions
from batchline.emulator import Emulator
from batchline.ledger import Ledger
from batchline.load import stage_documents
from batchline.models import ModelLimits, ModelTable
from batchline.retry import RETRYABLE_ERROR_TYPES
from batchline.storage import OutputLayout
from tests.conftest import TEST_API_KEY


def write_documents(folder: Path, count: int, start: int = 0) -> dict[str, str]:
    """``count`` distinct text documents named doc-NNNN.txt; returns doc_id → text."""
    folder.mkdir(parents=True, exist_ok=True)
    docs = {}
    for i in range(start, start + count):
        text = f"Document number {i} talks about topic {i % 7} in some detail. " * 3
        (folder / f"doc-{i:04d}.txt").write_text(text)
        docs[f"doc-{i:04d}"] = text
    return docs


def model_table(*models: str, context: int = 200_000, output: int = 64_000) -> ModelTable:
    """Models as the Models API would describe them, all usable and with the same limits."""
    limits = {m: ModelLimits(model=m, max_input_tokens=context, max_tokens=output) for m in models}
    return ModelTable(models=limits)


def cli_env(
    emulator: Emulator, home: Path, api_url: str | None = None, api_key: str = TEST_API_KEY
) -> dict[str, str]:
    """The environment of a CLI run against ``emulator``.

    Without ``api_url`` each run starts Prefect's temporary server (about 15 s); with it, runs
    share the server at that URL.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "BATCHLINE_"))}
    env |= {
        "ANTHROPIC_BASE_URL": emulator.base_url,
        "ANTHROPIC_API_KEY": api_key,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "COLUMNS": "400",  # so that Rich does not wrap the messages tests look for
    }
    if api_url is not None:
        env["PREFECT_API_URL"] = api_url
    return env


def run_cli(
    source: Path | str, output: Path | str, env: dict[str, str], *extra: str
) -> subprocess.Popen[bytes]:
    """Start ``batchline run SOURCE --output OUTPUT`` with fast polling, output captured.

    The run handles SIGINT as a run started at a terminal does, even when the suite itself was
    started as a background job of a shell, which gives it and its children an ignored SIGINT
    that the CLI keeps ignored (flows/interrupt.py).
    """
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "from batchline.cli import main; sys.exit(main())",
            "run",
            str(source),
            "--output",
            str(output),
            "--poll-interval",
            "0.5",
            "--max-poll-interval",
            "1",
            *extra,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def batchline(
    *arguments: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``batchline ARGUMENTS`` run to its end, what it printed captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "batchline.cli", *arguments],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def finish(process: subprocess.Popen[bytes], timeout: float = 300) -> tuple[int, str]:
    """Wait for a CLI run; its exit code and everything it printed."""
    out, _ = process.communicate(timeout=timeout)
    return process.returncode, out.decode(errors="replace")


@contextmanager
def lock_holder(output: str, ttl_seconds: float = 60.0) -> Iterator[subprocess.Popen[bytes]]:
    """Another process holding ``output``'s lock as "flow run holder"; SIGKILLed when the block
    ends, so that what it leaves is what a killed run leaves."""
    script = (
        "import sys, time\n"
        "from batchline.lock import output_lock\n"
        "from batchline.storage import OutputLayout\n"
        "layout, ttl = OutputLayout(sys.argv[1]), float(sys.argv[2])\n"
        "with output_lock(layout, 'flow run holder', ttl_seconds=ttl):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(600)\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", script, output, str(ttl_seconds)], stdout=subprocess.PIPE
    ) as process:
        try:
            assert process.stdout is not None
            assert process.stdout.readline() == b"held\n"
            yield process
        finally:
            process.kill()


def submitted_batches(output: Path) -> list[str]:
    """Ids of the batches a local output's ledger has recorded."""
    ledger = output / "ledger"
    if not ledger.exists():
        return []
    entries = [orjson.loads(p.read_bytes()) for p in ledger.glob("*.json")]
    return [e["batch_id"] for e in entries if e.get("batch_id")]


def assert_complete_and_paid_once(
    table: pd.DataFrame, emulator: Emulator, doc_ids: set[str]
) -> None:
    """The invariants every run's results ``table`` must hold, whatever the run went through.

    Exactly one row per input document; every row that could succeed did (only non-retryable
    errors remain); and the emulator saw each request exactly as often as its row says it was
    attempted, so no request sat in two paid batches unless the first one errored or expired it.
    """
    assert sorted(table.doc_id) == sorted(doc_ids)
    retryable = (table.status == "expired") | (
        (table.status == "errored") & table.error_type.isin(list(RETRYABLE_ERROR_TYPES))
    )
    assert not retryable.any(), table[retryable]
    submitted = table[table.status != "invalid"]
    seen = emulator.stats()["requests_per_custom_id"]
    assert seen == dict(zip(submitted.custom_id, submitted.attempts, strict=True))


def logged_pids(flow_run_id: UUID, prefix: str) -> set[int]:
    """PIDs named by the log lines starting with ``prefix`` of a flow run and of its subflows.

    The steps that may run on a cluster's workers log "... in process PID on HOST".
    """
    with get_client(sync_client=True) as client:
        parent = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
        subflows = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_task_run_id=FlowRunFilterParentTaskRunId(any_=[t.id for t in parent])
            )
        )
        runs = [flow_run_id, *(r.id for r in subflows)]
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=runs)))
    return {
        int(match.group(1))
        for log in logs
        if log.message.startswith(prefix)
        and (match := re.search(r" in process (\d+) on ", log.message))
    }


def result_line(custom_id: str, outcome: str, answer: str, model: str = DEFAULT_MODEL) -> bytes:
    """One line of a batch's results file: ``outcome`` is succeeded, expired or an error type."""
    result: dict[str, Any]
    if outcome == "succeeded":
        message = {
            "model": model,
            "content": [{"type": "text", "text": answer}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 3, "output_tokens": 4},
        }
        result = {"type": "succeeded", "message": message}
    elif outcome == "expired":
        result = {"type": "expired"}
    else:
        result = {"type": "errored", "error": {"type": "error", "error": {"type": outcome}}}
    return orjson.dumps({"custom_id": custom_id, "result": result})


def hello_params(max_tokens: int = 16) -> dict[str, Any]:
    """The Messages params of a one-word request, for tests that create batches by hand."""
    return {
        "model": DEFAULT_MODEL,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": "hi"}],
    }


SMALL_RUN_JOB = JobConfig()


def record_batch(layout: OutputLayout, requests: pa.Table, batch_id: str) -> None:
    """The ledger's record of a batch of ``requests`` created as ``batch_id``."""
    now = datetime.now(UTC)
    ledger = Ledger(layout)
    ledger.record_batch(ledger.record_intent(requests), batch_id, now, now, adopted=False)


def collect_answers(layout: OutputLayout, batch_id: str, outcomes: dict[str, str]) -> None:
    """``batch_id``'s results collected: an outcome (or error type) per custom_id."""
    lines = [result_line(c, o, f"answer to {c} in {batch_id}") for c, o in outcomes.items()]
    write_collected(layout, batch_id, lines, set(outcomes))


def small_run_output(root: Path, *, collect_retry: bool = True) -> OutputLayout:
    """Six documents, one invalid, over three shards; two overloaded in the first batch and
    answered by a second one (unless ``collect_retry`` is False: then they stay unanswered)."""
    rows = [{"id": f"d{i}", "text": f"text of d{i}"} for i in range(5)]
    rows.append({"id": "d5", "text": "text of d5", "max_tokens": "many"})
    root.mkdir()
    (root / "docs.jsonl").write_bytes(b"\n".join(orjson.dumps(r) for r in rows))
    layout = OutputLayout(str(root / "out"))
    loaded = stage_documents(str(root / "docs.jsonl"), layout, SourceOptions(shard_size=2))
    build_manifest(layout, SMALL_RUN_JOB, loaded.fingerprint, model_table(SMALL_RUN_JOB.model))
    manifest = pa.concat_tables(
        layout.read_table("manifest", n) for n in layout.names("manifest", ".parquet")
    )
    custom_ids = manifest.column("custom_id").to_pylist()
    record_batch(layout, manifest, "msgbatch_1")
    first = {c: "overloaded_error" if i < 2 else "succeeded" for i, c in enumerate(custom_ids)}
    collect_answers(layout, "msgbatch_1", first)
    retried = manifest.slice(0, 2)
    record_batch(layout, retried, "msgbatch_2")
    if collect_retry:
        collect_answers(layout, "msgbatch_2", dict.fromkeys(custom_ids[:2], "succeeded"))
    return layout
