"""Benchmark: the batchline pipeline against a plain SDK loop like the seed's, on the emulator.

    python bench/pipeline_bench.py [--documents 10000] [--faults]

Each side runs in its own process against its own fresh emulator process with the same settings,
so wall time and peak RSS (VmHWM) are each side's alone. Prints wall time, the ratio, peak memory
and how many rows each side lost (a row is lost when the document has no succeeded result).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

FAULTS = ["--error-rate", "overloaded_error=0.05", "--expire-rate", "0.02"]


def peak_rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def write_corpus(folder: Path, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "docs.jsonl", "w") as out:
        for i in range(count):
            text = f"Document {i}: a short note on subject {i % 97} with a few details. " * 4
            out.write(json.dumps({"id": f"doc-{i}", "text": text}) + "\n")


def run_seed_loop(source: Path, poll: float) -> dict[str, Any]:
    """The seed's workflow, with its create bug fixed (a list of dicts, not a file object)."""
    import anthropic

    client = anthropic.Anthropic()
    started = time.perf_counter()
    with open(source / "docs.jsonl") as lines:
        documents = [json.loads(line) for line in lines]
    requests = [
        {
            "custom_id": doc["id"],
            "params": {
                "model": "claude-haiku-4-5",
                "max_tokens": 1024,
                "messages": [{"role": "user", "content": doc["text"]}],
            },
        }
        for doc in documents
    ]
    batch = client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
    while client.messages.batches.retrieve(batch.id).processing_status != "ended":
        time.sleep(poll)
    results = {}
    for result in client.messages.batches.results(batch.id):
        if result.result.type == "succeeded":
            results[result.custom_id] = result.result.message.content[0].text  # type: ignore[union-attr]
    return {
        "seconds": time.perf_counter() - started,
        "rows": len(results),
        "lost": len(documents) - len(results),
        "peak_rss_mb": peak_rss_mb(),
    }


def run_pipeline(source: Path, output: Path, poll: float) -> dict[str, Any]:
    started = time.perf_counter()
    from flows.pipeline import batch_pipeline

    summary = batch_pipeline(
        source=str(source / "docs.jsonl"),
        output=str(output),
        poll_interval=poll,
        max_poll_interval=poll,
        max_attempts=5,
    )
    import pandas as pd

    table = pd.read_parquet(output / "results", columns=["status"])
    succeeded = int((table.status == "succeeded").sum())
    return {
        "seconds": time.perf_counter() - started,
        "rows": len(table),
        "lost": len(table) - succeeded,
        "peak_rss_mb": peak_rss_mb(),
        "batches": summary.batches,  # type: ignore[union-attr]
    }


def start_emulator(faults: bool) -> tuple[subprocess.Popen[str], str]:
    args = [sys.executable, "-m", "batchline.emulator", "--port", "0", "--processing-seconds", "0"]
    process = subprocess.Popen(args + (FAULTS if faults else []), stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    return process, line.strip().rsplit(" ", 1)[-1]


def measure(side: str, documents: int, faults: bool, workdir: Path) -> dict[str, Any]:
    emulator, url = start_emulator(faults)
    env = os.environ | {"ANTHROPIC_BASE_URL": url, "ANTHROPIC_API_KEY": "bench-key"}
    try:
        child = subprocess.run(
            [sys.executable, __file__, "--side", side, "--workdir", str(workdir)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        emulator.terminate()
        emulator.wait()
    return dict(json.loads(child.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--documents", type=int, default=10_000)
    parser.add_argument("--faults", action="store_true", help="errored and expired rows on")
    parser.add_argument("--poll", type=float, default=1.0)
    parser.add_argument("--side", choices=["seed", "pipeline"], help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:  # child process: one side, prints one JSON line
        result = (
            run_seed_loop(args.workdir, args.poll)
            if args.side == "seed"
            else run_pipeline(args.workdir, args.workdir / f"out-{time.time_ns()}", args.poll)
        )
        print(json.dumps(result))
        return
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        write_corpus(workdir, args.documents)
        seed = measure("seed", args.documents, args.faults, workdir)
        pipeline = measure("pipeline", args.documents, args.faults, workdir)
    print(f"documents: {args.documents}  faults: {'on' if args.faults else 'off'}")
    print(f"{'':10}{'seconds':>10}{'peak RSS MB':>14}{'rows lost':>11}")
    for name, figures in (("seed loop", seed), ("pipeline", pipeline)):
        print(
            f"{name:10}{figures['seconds']:>10.1f}{figures['peak_rss_mb']:>14.0f}"
            f"{figures['lost']:>11}"
        )
    print(f"pipeline / seed wall time: {pipeline['seconds'] / seed['seconds']:.2f}x")


if __name__ == "__main__":
    main()
