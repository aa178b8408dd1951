"""Helpers shared by the test modules: documents, the CLI in a subprocess, a Prefect server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import orjson
import pandas as pd

from batchline.emulator import Emulator
from batchline.retry import RETRYABLE_ERROR_TYPES
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
    """Start ``batchline run SOURCE --output OUTPUT`` with fast polling, output captured."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "batchline.cli",
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


def finish(process: subprocess.Popen[bytes], timeout: float = 300) -> tuple[int, str]:
    """Wait for a CLI run; its exit code and everything it printed."""
    out, _ = process.communicate(timeout=timeout)
    return process.returncode, out.decode(errors="replace")


def submitted_batches(output: Path) -> list[str]:
    """Ids of the batches a local output's ledger has recorded."""
    ledger = output / "ledger"
    if not ledger.exists():
        return []
    entries = [orjson.loads(p.read_bytes()) for p in ledger.glob("*.json")]
    return [e["batch_id"] for e in entries if e.get("batch_id")]


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def prefect_server_process(home: Path, timeout: float = 120) -> Iterator[str]:
    """A `prefect server start` subprocess (SQLite under ``home``); yields its API URL."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    home.mkdir(parents=True, exist_ok=True)
    log = (home / "server.log").open("wb")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prefect",
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-ui",
            "--no-scheduler",
            "--no-late-runs",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if server.poll() is not None:
                raise RuntimeError((home / "server.log").read_text())
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"prefect server did not start in {timeout} s")
            time.sleep(0.3)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


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
