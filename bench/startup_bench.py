"""Benchmark: the fixed cost of `batchline run`, per Prefect server, next to a plain SDK loop.

    python bench/startup_bench.py [--documents 20] [--repeats 3]

Each figure is the wall time of a whole `batchline run` process as a user starts it, and of its
command start to the first log line of its first task, against one emulator process (batches
end at once), with:

- "new home": an empty PREFECT_HOME, so the run's own server first creates Prefect's database;
- "warm home": the run's own server on a home an earlier run has prepared;
- "local server": `batchline server start` up (on a home of its own), which the run uses.

The seed loop (bench/pipeline_bench.py's: one create, fixed polls, typed results) runs as its
own process on the same documents and emulator. The scenarios take turns, ``--repeats`` rounds;
medians are printed with the machine's load average, since other work on the machine shows in
every figure.
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

# Run as a script, Python puts this file's folder on the path; deployments/ is not installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from deployments.local import emulator_process, free_port

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


Figures = tuple[float, float | None]


def medians(figures: list[Figures]) -> str:
    whole = statistics.median(f[0] for f in figures)
    firsts = [f[1] for f in figures if f[1] is not None]
    first = f"{statistics.median(firsts):10.1f}" if firsts else f"{'-':>10}"
    return f"{first} {whole:9.1f}"


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

        def run_in(home: Path) -> Figures:
            output = root / f"out-{time.time_ns()}"
            return timed_run(run_command(corpus, output), base | {"PREFECT_HOME": str(home)})

        def seed() -> Figures:
            bench = str(Path(__file__).with_name("pipeline_bench.py"))
            side = ["--side", "seed", "--corpus", str(corpus), "--poll", POLL]
            return timed_run([sys.executable, bench, *side], base)[0], None

        warm, served = root / "warm-home", root / "served-home"
        run_in(warm)  # prepares the warm home's database
        server = base | {"PREFECT_HOME": str(served)}
        start = batchline("server", "start", "--port", str(free_port()))
        subprocess.run(start, env=server, check=True, capture_output=True)
        scenarios: dict[str, Callable[[int], Figures]] = {
            "temporary server, new home": lambda i: run_in(root / f"new-home-{i}"),
            "temporary server, warm home": lambda i: run_in(warm),
            "local server (batchline server)": lambda i: run_in(served),
            "seed loop (plain SDK)": lambda i: seed(),
        }
        figures: dict[str, list[Figures]] = {name: [] for name in scenarios}
        try:
            # Round-robin, so a change in the machine's load weighs on every scenario alike.
            for i in range(opts.repeats):
                for name, measure in scenarios.items():
                    figures[name].append(measure(i))
        finally:
            subprocess.run(batchline("server", "stop"), env=server, capture_output=True)
    print(f"{opts.documents} documents, medians of {opts.repeats} runs, seconds")
    print(f"{'':32} {'first task':>10} {'whole run':>9}")
    for name, runs in figures.items():
        print(f"{name:32} {medians(runs)}")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--documents", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    report(parser.parse_args())


if __name__ == "__main__":
    main()
