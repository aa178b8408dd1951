"""Benchmark: the batchline pipeline against a plain SDK loop like the seed's, on the emulator.

    python bench/pipeline_bench.py [--sizes 1000,100000,1000000,10000000] [--faults off,on]
                                   [--servers local,own]

For every size and fault setting, each side runs in its own process against its own fresh
emulator process with the same settings, so wall time and peak RSS (VmHWM) are each side's alone.
Wall time runs from the child's launch to the end of its work: the interpreter's start and each
side's imports (the SDK alone takes a second or two) count for both sides alike.
The pipeline side is the whole `batchline run` command (its main() in the child process) with
each kind of Prefect server: `local`, a running server (`batchline server start`, here
PREFECT_API_URL), and `own`, the default a user gets without one (the run starts its own server
on a warm PREFECT_HOME; that server's process is not in the peak RSS). The seed loop runs only up
to 100,000 documents, what one batch can hold. Also prints the results parse throughput of the
SDK's typed iteration against batchline's fast path. A row is lost when its document has no
succeeded result.
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

# Run as a script, Python puts this file's folder on the path; deployments/ is not installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from deployments.local import emulator_process, prefect_server

# The seed loop sends everything in one batch, which holds at most 100,000 requests.
SEED_LOOP_LIMIT = 100_000
FAULTS = ["--error-rate", "overloaded_error=0.05", "--expire-rate", "0.02"]
MODEL = "claude-haiku-4-5"


def peak_rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def write_corpus(path: Path, count: int) -> None:
    """A JSONL source: at ten million documents, millions of small files are not the point."""
    with open(path, "w") as out:
        for i in range(count):
            text = f"Document {i}: a short note on subject {i % 97} with a few details. " * 4
            out.write(json.dumps({"id": f"doc-{i}", "text": text}) + "\n")


# --- the two sides, each run in a child process -------------------------------------------


def run_seed_loop(corpus: Path, poll: float, launched: float) -> dict[str, Any]:
    """The seed's workflow, with its create bug fixed (a list of dicts, not a file object)."""
    import anthropic

    client = anthropic.Anthropic()
    with open(corpus) as lines:
        documents = [json.loads(line) for line in lines]
    requests = [
        {
            "custom_id": doc["id"],
            "params": {
                "model": MODEL,
                "max_tokens": 1024,
                "messages": [{"role": "user", "content": doc["text"]}],
            },
        }
        for doc in documents
    ]
    results: dict[str, str] = {}
    error = None
    try:
        batch = client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
        while client.messages.batches.retrieve(batch.id).processing_status != "ended":
            time.sleep(poll)
        for result in client.messages.batches.results(batch.id):
            if result.result.type == "succeeded":
                results[result.custom_id] = result.result.message.content[0].text  # type: ignore[union-attr]
    except anthropic.APIError as exc:  # the seed has no splitting: over 100k requests it fails
        error = f"{type(exc).__name__}: {str(exc)[:80]}"
    return {
        "seconds": time.time() - launched,
        "lost": len(documents) - len(results),
        "peak_rss_mb": peak_rss_mb(),
        "error": error,
    }


def run_pipeline(corpus: Path, output: Path, poll: float, launched: float) -> dict[str, Any]:
    """`batchline run`, as a user types it, in this process: so its peak RSS is this one's."""
    import contextlib

    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    from batchline.cli import main as batchline

    argv = [
        "run",
        str(corpus),
        "--output",
        str(output),
        "--model",
        MODEL,
        "--poll-interval",
        str(poll),
        "--max-poll-interval",
        str(max(poll, 30.0)),
        "--max-attempts",
        "5",
    ]
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries this side's figures alone
        code = batchline(argv)
    seconds = time.time() - launched
    status = ds.dataset(output / "results").to_table(columns=["status"]).column("status")
    return {
        "seconds": seconds,
        "lost": len(status) - pc.sum(pc.equal(status, "succeeded")).as_py(),
        "peak_rss_mb": peak_rss_mb(),
        "error": None if code == 0 else f"exit {code}",
    }


def run_parse(count: int) -> dict[str, Any]:
    """Results parse throughput of one ended batch: SDK typed iteration vs the fast path."""
    import anthropic

    from batchline.collect import iter_result_lines, parse_result_line

    client = anthropic.Anthropic()
    requests = [
        {
            "custom_id": f"r{i}",
            "params": {
                "model": MODEL,
                "max_tokens": 256,
                "messages": [{"role": "user", "content": f"Request {i} about subject {i % 97}."}],
            },
        }
        for i in range(count)
    ]
    batch = client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
    while client.messages.batches.retrieve(batch.id).processing_status != "ended":
        time.sleep(0.5)
    nbytes = sum(len(line) + 1 for line in iter_result_lines(client, batch.id))  # warm + size
    started = time.perf_counter()
    typed = sum(1 for _ in client.messages.batches.results(batch.id))
    typed_s = time.perf_counter() - started
    started = time.perf_counter()
    fast = sum(1 for line in iter_result_lines(client, batch.id) if parse_result_line(line, "b"))
    fast_s = time.perf_counter() - started
    assert typed == fast == count
    return {"rows": count, "mb": nbytes / 1e6, "typed_s": typed_s, "fast_s": fast_s}


# --- the parent: processes, emulators, the report -----------------------------------------


def warm_up(root: Path, opts: argparse.Namespace, env: dict[str, str]) -> None:
    """One small run with ``env``'s Prefect server, as a user's has run before: the first run
    on a new server registers the flow and the storage block's type, and on the `own` side's
    PREFECT_HOME creates its database."""
    corpus = root / "warm-up.jsonl"
    write_corpus(corpus, 10)
    measure("pipeline", corpus, root, False, opts, env)
    corpus.unlink()


def emulator_options(faults: bool, processing_seconds: float) -> list[str]:
    """Emulator CLI options: both sides of a measurement get the same ones."""
    return ["--processing-seconds", str(processing_seconds), *(FAULTS if faults else [])]


def emulator_stats(url: str) -> dict[str, Any]:
    import urllib.request

    with urllib.request.urlopen(f"{url}/_emulator/stats?per_custom_id=0") as response:
        return dict(json.load(response))


def child(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    """One side in its own process. Its seconds count from the launch: the interpreter's start
    and each side's imports are part of what a user waits for, on both sides alike."""
    done = subprocess.run(
        [sys.executable, __file__, *args, "--launched", repr(time.time())],
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise RuntimeError(f"{args} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def measure(
    side: str,
    corpus: Path,
    workdir: Path,
    faults: bool,
    opts: argparse.Namespace,
    env: dict[str, str],
) -> dict[str, Any]:
    with emulator_process(*emulator_options(faults, opts.processing_seconds)) as (_, url):
        env = env | {"ANTHROPIC_BASE_URL": url, "ANTHROPIC_API_KEY": "bench-key"}
        figures = child(
            [
                "--side",
                side,
                "--corpus",
                str(corpus),
                "--workdir",
                str(workdir),
                "--poll",
                str(opts.poll),
            ],
            env,
        )
        figures["api_calls"] = emulator_stats(url)["http_calls"]
    return figures


def report(opts: argparse.Namespace) -> None:
    sizes = [int(s) for s in opts.sizes.split(",")]
    fault_modes = [mode == "on" for mode in opts.faults.split(",")]
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        base_env["PREFECT_HOME"] = str(root / "client-home")
        own_env = base_env | {"PREFECT_HOME": str(root / "own-home")}
        with prefect_server(root / "server-home") as api:
            served_env = base_env | {"PREFECT_API_URL": api}
            for server in opts.servers.split(","):
                warm_up(root, opts, own_env if server == "own" else served_env)
            print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
            with emulator_process(*emulator_options(False, 0)) as (_, url):
                env = {"ANTHROPIC_BASE_URL": url, "ANTHROPIC_API_KEY": "bench-key"}
                parse = child(["--side", "parse", "--rows", str(opts.parse_rows)], base_env | env)
            rows, mb, typed_s, fast_s = (parse[k] for k in ("rows", "mb", "typed_s", "fast_s"))
            print(
                f"results parse, {rows:,} rows ({mb:.0f} MB): SDK typed"
                f" {rows / typed_s:,.0f} rows/s ({mb / typed_s:.1f} MB/s),"
                f" fast path {rows / fast_s:,.0f} rows/s"
                f" ({mb / fast_s:.1f} MB/s): {typed_s / fast_s:.1f}x faster"
            )
            header = (
                f"{'documents':>10} {'faults':>6} {'side':>15} {'seconds':>8} {'docs/s':>8} "
                f"{'peak MB':>8} {'lost':>9} {'API calls':>9}  note"
            )
            print(header)
            for size in sizes:
                corpus = root / f"corpus-{size}.jsonl"
                write_corpus(corpus, size)
                for faults in fault_modes:
                    seed = None
                    if size <= SEED_LOOP_LIMIT:
                        seed = measure("seed", corpus, root, faults, opts, base_env)
                        _print_row(size, faults, "seed loop", seed, None)
                    for server in opts.servers.split(","):
                        env = served_env if server == "local" else own_env
                        pipe = measure("pipeline", corpus, root, faults, opts, env)
                        _print_row(size, faults, f"pipeline, {server}", pipe, seed)
                corpus.unlink()


def _print_row(
    size: int, faults: bool, name: str, fig: dict[str, Any], seed: dict[str, Any] | None
) -> None:
    note = fig["error"] or ""
    if seed is not None and name != "seed loop":
        note = f"{fig['seconds'] / seed['seconds']:.2f}x the seed loop {note}".strip()
    print(
        f"{size:>10,} {'on' if faults else 'off':>6} {name:>15} {fig['seconds']:>8.1f} "
        f"{size / fig['seconds']:>8,.0f} {fig['peak_rss_mb']:>8.0f} {fig['lost']:>9,} "
        f"{fig['api_calls']:>9}  {note}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000,100000,1000000,10000000")
    parser.add_argument("--faults", default="off", help="off, on, or off,on")
    parser.add_argument(
        "--servers", default="local,own", help="Prefect server of the pipeline: local, own, or both"
    )
    parser.add_argument("--poll", type=float, default=1.0, help="first poll interval, both sides")
    parser.add_argument("--processing-seconds", type=float, default=0.0)
    parser.add_argument("--parse-rows", type=int, default=100_000)
    parser.add_argument("--side", choices=["seed", "pipeline", "parse"], help=argparse.SUPPRESS)
    parser.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--launched", type=float, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    match opts.side:
        case None:
            report(opts)
            return
        case "seed":
            result = run_seed_loop(opts.corpus, opts.poll, opts.launched)
        case "pipeline":
            output = opts.workdir / f"out-{time.time_ns()}"
            result = run_pipeline(opts.corpus, output, opts.poll, opts.launched)
        case "parse":
            result = run_parse(opts.rows)
        case other:
            raise ValueError(other)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
