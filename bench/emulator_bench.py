"""Benchmark the emulator with one big batch: create, wait, download, and the server's peak memory.

The emulator runs as a subprocess through its CLI so that /proc/PID/status measures the server
alone; the batch goes through the official SDK exactly as the pipeline sends it.

    .venv/bin/python bench/emulator_bench.py --requests 100000
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anthropic
import httpx2

# Run as a script, Python puts this file's folder on the path; deployments/ is not installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from deployments.local import emulator_process


def _memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in KiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return {
        key: int(re.search(rf"^{key}:\s+(\d+) kB", status, re.M)[1]) for key in ("VmRSS", "VmHWM")
    }  # type: ignore[index]


def _requests(count: int, prompt_chars: int) -> list[dict[str, Any]]:
    filler = ("The quick brown fox jumps over the lazy dog. " * (prompt_chars // 45 + 1))[
        :prompt_chars
    ]
    return [
        {
            "custom_id": f"doc-{index:06d}",
            "params": {
                "model": "claude-haiku-4-5",
                "max_tokens": 512,
                "system": "Summarise the document in three sentences.",
                "messages": [{"role": "user", "content": f"Document {index}. {filler}"}],
            },
        }
        for index in range(count)
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--prompt-chars", type=int, default=2_000, help="Characters per prompt.")
    parser.add_argument("--processing-seconds", type=float, default=1.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="emulator-bench-") as workdir:
        options = ["--db", str(Path(workdir) / "state.sqlite")]
        options += ["--processing-seconds", str(args.processing_seconds)]
        with emulator_process(*options) as (server, base_url):
            idle = _memory_kib(server.pid)
            sizes: list[int] = []

            def record_size(request: httpx2.Request) -> None:
                if request.method == "POST":
                    sizes.append(int(request.headers["content-length"]))

            sdk = anthropic.Anthropic(
                api_key="bench",
                base_url=base_url,
                max_retries=0,
                http_client=httpx2.Client(event_hooks={"request": [record_size]}),
            )
            requests = _requests(args.requests, args.prompt_chars)

            start = time.perf_counter()
            batch = sdk.messages.batches.create(requests=requests)  # type: ignore[arg-type]
            created = time.perf_counter()
            del requests
            while batch.processing_status != "ended":
                time.sleep(0.2)
                batch = sdk.messages.batches.retrieve(batch.id)
            ended = time.perf_counter()
            results = 0
            kinds: dict[str, int] = {}
            for line in sdk.messages.batches.results(batch.id):
                results += 1
                kinds[line.result.type] = kinds.get(line.result.type, 0) + 1
            downloaded = time.perf_counter()
            peak = _memory_kib(server.pid)
            db_bytes = sum(path.stat().st_size for path in Path(workdir).iterdir())

    body_mb = sizes[0] / 1e6
    peak_mb = peak["VmHWM"] / 1024
    ratio = peak["VmHWM"] * 1024 / sizes[0]
    python = f"{platform.python_implementation()} {platform.python_version()}"
    print(f"machine          {platform.machine()}, {os.cpu_count()} cores, {python}")
    print(f"requests         {args.requests:,} ({args.prompt_chars:,} characters of prompt each)")
    print(f"body             {body_mb:,.1f} MB")
    print(f"create           {created - start:8.2f} s")
    print(
        f"wait until ended {ended - created:8.2f} s (processing_seconds={args.processing_seconds})"
    )
    print(f"download         {downloaded - ended:8.2f} s ({results:,} results: {kinds})")
    print(f"server RSS idle  {idle['VmRSS'] / 1024:8.1f} MiB")
    print(f"server peak RSS  {peak_mb:8.1f} MiB (VmHWM), {ratio:.2f}x the body")
    print(f"database on disk {db_bytes / 1e6:8.1f} MB")
    return 0 if results == args.requests else 1


if __name__ == "__main__":
    sys.exit(main())
