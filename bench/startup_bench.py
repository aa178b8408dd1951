"""Benchmark: the fixed cost of `batchline run`, per Prefect server, next to a plain SDK loop.

    python bench/startup_bench.py [--documents 20] [--repeats 3]

Each figure is the wall time of a whole `batchline run` process as a user starts it, and of its
command start to the first log line of its first task, against one emulator process (batches
end at once), with:

- "new home": an empty PREFECT_HOME, so the run's own server first creates Prefect's database;
- "warm home": the run's own server on a home an earlier run has prepared;
- "local server": `batchline server start` up on that home, which the run uses.

The seed loop (bench/pipeline_bench.py's: one create, fixed polls, typed results) runs as its
own process on the same documents and emulator. Medians of ``--repeats`` runs are printed, with
the machine's load average, since other work on the machine shows in every figure.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pipeline_bench import write_corpus

from batchline.local import emulator_process, free_port

POLL = "0.5"
FIRST_TASK = "Task run '"


def timed_run(command: list[str], env: dict[str, str]) -> tuple[float, float | None]:
    """Seconds to the process's exit, and to its first line naming a task run (if any)."""
    started = time.perf_counter()
    first_task = None
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line.decode(errors="replace"))
        if first_task is None and FIRST_TASK in lines[-1]:
            first_task = time.perf_counter() - started
    if process.wait() != 0:
        raise RuntimeError(f"{command} failed:\n{''.join(lines[-40:])}")
    return time.perf_counter() - started, first_task


def batchline(*args: str) -> list[str]:
    return [sys.executable, "-m", "batchline.cli", *args]


def run_command(corpus: Path, output: Path) -> list[str]:
    polls = ["--poll-interval", POLL, "--max-poll-interval", POLL]
    return batchline("run", str(corpus), "--output", str(output), *polls)


def median_of(repeats: int, measure: Callable[[int], tuple[float, float | None]]) -> str:
    figures = [measure(i) for i in range(repeats)]
    whole = statistics.median(f[0] for f in figures)
    firsts = [f[1] for f in figures if f[1] is not None]
    first = f"{statistics.median(firsts):6.1f}" if firsts else "     -"
    return f"{first} {whole:8.1f}"


def report(opts: argparse.Namespace) -> None:
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start")
    with (
        tempfile.TemporaryDirectory() as scratch,
        emulator_process("--processing-seconds", "0") as (_, url),
    ):
        root = Path(scratch)
        corpus = root / "corpus.jsonl"
        write_corpus(corpus, opts.documents)
        base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        base |= {"ANTHROPIC_BASE_URL": url, "ANTHROPIC_API_KEY": "bench-key", "COLUMNS": "300"}

        def run_with(home: Callable[[int], Path]) -> Callable[[int], tuple[float, float | None]]:
            def measure(i: int) -> tuple[float, float | None]:
                output = root / f"out-{time.time_ns()}"
                return timed_run(run_command(corpus, output), base | {"PREFECT_HOME": str(home(i))})

            return measure

        def seed(i: int) -> tuple[float, float | None]:
            bench = str(Path(__file__).with_name("pipeline_bench.py"))
            side = ["--side", "seed", "--corpus", str(corpus), "--workdir", str(root)]
            return timed_run([sys.executable, bench, *side, "--poll", POLL], base)[0], None

        warm = root / "warm-home"
        rows = {
            "temporary server, new home": run_with(lambda i: root / f"new-home-{i}"),
            "temporary server, warm home": run_with(lambda i: warm),
        }
        print(f"{opts.documents} documents, medians of {opts.repeats} runs, seconds")
        print(f"{'':32} {'first task':>10} {'whole run':>9}")
        for name, measure in rows.items():
            print(f"{name:32} {median_of(opts.repeats, measure):>20}", flush=True)
        start = batchline("server", "start", "--port", str(free_port()))
        subprocess.run(
            start, env=base | {"PREFECT_HOME": str(warm)}, check=True, capture_output=True
        )
        try:
            local = median_of(opts.repeats, run_with(lambda i: warm))
            print(f"{'local server (batchline server)':32} {local:>20}", flush=True)
        finally:
            stop = batchline("server", "stop")
            subprocess.run(
                stop, env=base | {"PREFECT_HOME": str(warm)}, check=True, capture_output=True
            )
        print(f"{'seed loop (plain SDK)':32} {median_of(opts.repeats, seed):>20}")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--documents", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    report(parser.parse_args())


if __name__ == "__main__":
    main()
