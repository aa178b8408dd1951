"""Correctness at scale: `batchline run` over a matrix of source shapes and sizes, each result
checked against the emulator's own record of what was asked and answered.

    python bench/scale_check.py [--cases NAME,...] [--scale 1.0] [--list]

Each case writes its source, starts its own emulator process (its state in an SQLite file this
script reads afterwards), and runs the CLI as a user types it against one shared Prefect server,
in steps: a run, a rerun (must submit nothing), 10% more documents (a new file, or appended to
the first JSONL file) then a rerun (must submit only those), a rerun with --shard-size 1000 or
after the last tenth of the first JSONL file is cut (both must submit nothing, and the results
must hold the documents of now), or a run SIGKILLed while it waits (for its first batch, or for
its second: the retry round's) then the same command again. After every step:

- exit status 0 and exactly one row per document of the source, each custom_id once;
- every request the emulator holds for a row's custom_id asks about that row's document (its
  prompt is the document's text), and an answered row's text and batch_id are those of the
  emulator's answer to the last request for that custom_id (a plain reply quotes the document);
- paid once: the emulator received each custom_id exactly as often as the row's `attempts`, and
  requests_submitted is their sum (no batch is ever paid twice).

None of these checks uses batchline's code: they read the Parquet and the emulator's database.
Prints one PASS/FAIL line per step with its figures; exit status 1 when any step failed.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import orjson
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

# Run as a script, Python puts this file's folder on the path; deployments/ is not installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from deployments.local import prefect_server, start_emulator, stop

FAULTS = ("--error-rate", "overloaded_error=0.05", "--expire-rate", "0.03")
S3_ROOT = "s3://scale-check"
OUTPUT_FAULTS = ("--output-fault-rate", "truncated=0.03", "--output-fault-rate", "mismatched=0.03")
SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["a", "b", "c"]},
        "score": {"type": "integer"},
    },
    "required": ["label", "score"],
}

Docs = dict[str, str]
Writer = Callable[[Path, int, int], Docs]


def doc_text(doc_id: str, i: int) -> str:
    """A document whose first characters (the part a reply quotes) name it."""
    return f"{doc_id} is about subject {i % 97}; it has a few details and no others. " * 2


def write_jsonl(root: Path, start: int, count: int) -> Docs:
    docs = {f"j{i:07d}": doc_text(f"j{i:07d}", i) for i in range(start, start + count)}
    with open(root / f"part-{start:07d}.jsonl", "wb") as out:
        for doc_id, text in docs.items():
            out.write(orjson.dumps({"id": doc_id, "text": text}) + b"\n")
    return docs


def write_jsonl_large(root: Path, start: int, count: int) -> Docs:
    """Documents of about 22 KB: 13,000 of them are more than one batch of 256 MB."""
    docs = {f"l{i:07d}": doc_text(f"l{i:07d}", i) * 170 for i in range(start, start + count)}
    with open(root / f"part-{start:07d}.jsonl", "wb") as out:
        for doc_id, text in docs.items():
            out.write(orjson.dumps({"id": doc_id, "text": text}) + b"\n")
    return docs


def write_csv(root: Path, start: int, count: int) -> Docs:
    docs = {f"c{i:07d}": doc_text(f"c{i:07d}", i) for i in range(start, start + count)}
    with open(root / f"part-{start:07d}.csv", "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["id", "text"])
        writer.writerows(docs.items())
    return docs


def write_parquet(root: Path, start: int, count: int) -> Docs:
    docs = {f"p{i:07d}": doc_text(f"p{i:07d}", i) for i in range(start, start + count)}
    table = pa.table({"id": list(docs), "text": list(docs.values())})
    pq.write_table(table, root / f"part-{start:07d}.parquet", row_group_size=7_000)
    return docs


def write_txt(root: Path, start: int, count: int) -> Docs:
    docs = {f"t{i:07d}": doc_text(f"t{i:07d}", i) for i in range(start, start + count)}
    for doc_id, text in docs.items():
        (root / f"{doc_id}.txt").write_text(text)
    return docs


@dataclass
class Case:
    """A source of ``files`` (document counts) of one format, run with ``options``."""

    name: str
    writer: Writer
    files: list[int]
    options: list[str] = field(default_factory=list)
    faults: bool = False
    steps: list[str] = field(default_factory=lambda: ["run"])
    processing_seconds: float = 0.0
    output_faults: bool = False  # spoiled structured replies: truncated or not of the schema
    s3: bool = False  # source and output on moto's S3 server (steps: run and rerun only)
    emulator: list[str] = field(default_factory=list)  # more emulator options

    def max_attempts(self) -> int:
        options = self.options
        return (
            int(options[options.index("--max-attempts") + 1]) if "--max-attempts" in options else 3
        )


CASES = [
    Case("jsonl-1file-25k", write_jsonl, [25_000]),
    Case("csv-1file-25k", write_csv, [25_000]),
    Case("parquet-1file-25k", write_parquet, [25_000]),
    Case("jsonl-3files-mixed", write_jsonl, [23_456, 4_321, 10_000]),
    Case("txt-folder-3k", write_txt, [3_000], ["--shard-size", "1000"]),
    Case(
        "jsonl-shard1000-batch700",
        write_jsonl,
        [12_345],
        ["--shard-size", "1000", "--batch-size", "700", "--max-batches-in-flight", "4"],
    ),
    Case("jsonl-batch25k-2shards", write_jsonl, [30_000], ["--batch-size", "25000"]),
    Case(
        "jsonl-faults-rerun-add",
        write_jsonl,
        [24_000],
        [
            "--shard-size",
            "5000",
            "--batch-size",
            "4000",
            "--max-batches-in-flight",
            "3",
            "--max-attempts",
            "6",
        ],
        faults=True,
        steps=["run", "rerun", "add", "rerun"],
    ),
    Case(
        "parquet-kill9-midwait",
        write_parquet,
        [21_000],
        ["--batch-size", "6000"],
        steps=["kill", "run", "rerun"],
        processing_seconds=20.0,
    ),
    Case(
        "jsonl-structured-15k",
        write_jsonl,
        [15_000],
        ["--shard-size", "4000"],
        faults=True,
        steps=["run", "rerun"],
    ),
    Case("jsonl-append-rerun", write_jsonl, [25_000], steps=["run", "append", "rerun"]),
    Case("jsonl-reshard-shrink", write_jsonl, [25_000], steps=["run", "reshard", "shrink", "run"]),
    Case(
        "jsonl-structured-spoiled-retry",
        write_jsonl,
        [12_000],
        ["--retry-invalid-output", "--max-attempts", "5"],
        faults=True,
        output_faults=True,
    ),
    Case(
        "txt-folder-20k-faults-kill",
        write_txt,
        [20_000],
        faults=True,
        steps=["kill", "run", "rerun"],
        processing_seconds=15.0,
    ),
    Case(
        "jsonl-dask2-25k",
        write_jsonl,
        [25_000, 3_000],
        ["--dask-workers", "2", "--shard-size", "4000"],
        faults=True,
        steps=["run", "add", "rerun"],
    ),
    Case("s3-jsonl-22k", write_jsonl, [22_000], faults=True, steps=["run", "rerun"], s3=True),
    Case(
        "jsonl-faults-kill-in-retry",
        write_jsonl,
        [15_000],
        ["--max-attempts", "6"],
        faults=True,
        steps=["kill2", "run", "rerun"],
        processing_seconds=10.0,
    ),
    Case("jsonl-large-docs-290mb", write_jsonl_large, [13_000]),
    # Batches reach their expiry partway (at 3,000 requests a second, 3 s): most of each batch
    # expires, and retry rounds carry the rest over many parts.
    Case(
        "jsonl-batches-expire-partway",
        write_jsonl,
        [20_000],
        ["--shard-size", "3000", "--max-attempts", "6"],
        emulator=["--requests-per-second", "3000", "--expiry-seconds", "3"],
    ),
    Case("jsonl-1file-200k", write_jsonl, [200_000]),
    Case("jsonl-1file-1m", write_jsonl, [1_000_000]),
]


Received = dict[str, list[tuple[str, bytes, bytes]]]


def emulator_db(path: Path) -> tuple[Received, dict[str, int]]:
    """custom_id → [(batch id, request JSON, result line or b'')] in submission order, and the
    emulator's counters."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        batches = dict(db.execute("SELECT seq, id FROM batches"))
        seen: Received = {}
        rows = db.execute(
            "SELECT batch_seq, custom_id, body, line FROM requests ORDER BY batch_seq, idx"
        )
        for seq, custom_id, body, line in rows:
            seen.setdefault(custom_id, []).append((batches[seq], bytes(body), bytes(line or b"")))
        counters = dict(db.execute("SELECT name, value FROM counters"))
    finally:
        db.close()
    return seen, counters


def prompt_of(body: bytes) -> str:
    request = orjson.loads(body)
    params = request.get("params", request)
    for message in reversed(params["messages"]):
        if message["role"] == "user":
            content = message["content"]
            if isinstance(content, str):
                return str(content)
            return "\n".join(b["text"] for b in content if b.get("type") == "text")
    return ""


def read_results(output: str) -> list[dict[str, Any]]:
    """The rows of ``OUTPUT/results``, local or on S3 (AWS_ENDPOINT_URL from the environment)."""
    fs, path = fsspec.core.url_to_fs(f"{output}/results")
    return ds.dataset(path, filesystem=fs).to_table().to_pylist()  # type: ignore[no-any-return]


def check(
    output: str,
    docs: Docs,
    db: Path,
    structured: bool,
    retired: dict[str, int],
    max_attempts: int,
) -> list[str]:
    """Every failed invariant, as a line; empty when the output is right.

    ``retired``: custom_id → attempts of the rows of documents since removed from the source,
    which were paid for once and have no row now.
    """
    problems: list[str] = []
    table = read_results(output)
    ids = [r["doc_id"] for r in table]
    if len(ids) != len(set(ids)):
        problems.append(f"{len(ids) - len(set(ids))} duplicate doc_id rows")
    missing, extra = set(docs) - set(ids), set(ids) - set(docs)
    if missing or extra:
        problems.append(f"{len(missing)} documents without a row, {len(extra)} rows of no document")
    seen, counters = emulator_db(db)
    customs = [r["custom_id"] for r in table if r["custom_id"] is not None]
    if len(customs) != len(set(customs)):
        problems.append(f"{len(customs) - len(set(customs))} custom_ids on two rows")
    wrong_doc = wrong_text = wrong_paid = wrong_batch = not_ok = 0
    attempts_sum = 0
    for row in table:
        # Only a request that used all its attempts may end failed (or spoiled, when asked to
        # retry spoiled replies); the sources hold no invalid document.
        spent = row["attempts"] is not None and row["attempts"] >= max_attempts
        if row["status"] != "succeeded" and not (
            spent and row["status"] in ("expired", "errored", "invalid_output")
        ):
            not_ok += 1
        if row["status"] == "invalid":
            continue
        requests = seen.get(row["custom_id"], [])
        attempts_sum += row["attempts"] or 0
        if len(requests) != row["attempts"]:
            wrong_paid += 1
        if any(prompt_of(body) != docs.get(row["doc_id"]) for _, body, _ in requests):
            wrong_doc += 1
        if row["status"] in ("succeeded", "invalid_output") and requests:
            # The row answers with the last request sent for it; an earlier one can only have
            # failed or been spoiled (each attempt is counted above).
            batch, _, line = requests[-1]
            result: dict[str, Any] = orjson.loads(line)["result"] if line else {"type": "none"}
            text = ""
            if result["type"] == "succeeded":
                content = result["message"]["content"]
                text = "".join(b["text"] for b in content if b["type"] == "text")
            if text != row["text"]:
                wrong_text += 1
            elif batch != row["batch_id"]:
                wrong_batch += 1
            elif not structured and not text.startswith(
                "Emulated reply to: " + docs[row["doc_id"]][:40]
            ):
                wrong_text += 1
    for name, count in [
        ("rows whose requests asked about another document", wrong_doc),
        ("answered rows whose text is not the answer to their last request", wrong_text),
        ("rows whose batch_id is not the batch that answered", wrong_batch),
        ("rows whose attempts differ from what the emulator received", wrong_paid),
    ]:
        if count:
            problems.append(f"{count} {name}")
    attempts_sum += sum(retired.values())
    if counters.get("requests_submitted", 0) != attempts_sum:
        problems.append(
            f"requests_submitted {counters.get('requests_submitted')} != sum of attempts "
            f"{attempts_sum}"
        )
    rows_not_in_table = set(seen) - set(customs)
    if any(len(seen[c]) != retired.get(c) for c in rows_not_in_table):
        problems.append(f"{len(rows_not_in_table)} custom_ids paid for that no row holds")
    if not_ok:
        problems.append(f"{not_ok} rows did not succeed while attempts remained")
    return problems


def submitted(db: Path) -> int:
    db_conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = db_conn.execute(
            "SELECT value FROM counters WHERE name = 'requests_submitted'"
        ).fetchone()
    finally:
        db_conn.close()
    return int(row[0]) if row else 0


def command(case: Case, source: str, output: str, schema: Path) -> list[str]:
    extra = ["--output-schema", str(schema)] if "structured" in case.name else []
    return [
        sys.executable,
        "-m",
        "batchline.cli",
        "run",
        source,
        "--output",
        output,
        "--poll-interval",
        "0.5",
        "--max-poll-interval",
        "2",
        *case.options,
        *extra,
    ]


def kill_mid_wait(
    argv: list[str], env: dict[str, str], output: Path, log: Path, batches: int
) -> str:
    """Start the run, SIGKILL its process group once ``batches`` batches are in the ledger (2
    with one batch a round: in the wait of the retry round)."""
    with log.open("ab") as out:
        process = subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and process.poll() is None:
            entries = (
                list((output / "ledger").glob("*.json")) if (output / "ledger").exists() else []
            )
            if sum(bool(orjson.loads(p.read_bytes()).get("batch_id")) for p in entries) >= batches:
                time.sleep(2)
                break
            time.sleep(0.5)
        if process.poll() is not None:
            return f"finished before the kill (exit {process.returncode})"
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return "killed mid-wait"


def run_case(case: Case, root: Path, env: dict[str, str], scale: float) -> bool:
    work = root / case.name
    source, output, db, schema = (
        work / "source",
        work / "out",
        work / "emulator.db",
        work / "s.json",
    )
    source.mkdir(parents=True)
    schema.write_bytes(orjson.dumps(SCHEMA))
    docs: Docs = {}
    start = 0
    for count in case.files:
        count = max(1, int(count * scale))
        docs |= case.writer(source, start, count)
        start += count
    options = ["--db", str(db), "--processing-seconds", str(case.processing_seconds)]
    emulator, url = start_emulator(
        *options,
        *(FAULTS if case.faults else ()),
        *(OUTPUT_FAULTS if case.output_faults else ()),
        *case.emulator,
        log=work / "emulator.log",
    )
    env = env | {"ANTHROPIC_BASE_URL": url, "ANTHROPIC_API_KEY": "scale-check"}
    origin, target = str(source), str(output)
    if case.s3:
        fs, _ = fsspec.core.url_to_fs(S3_ROOT)
        fs.put(f"{source}/", f"{S3_ROOT}/{case.name}/source/", recursive=True)
        origin, target = f"{S3_ROOT}/{case.name}/source", f"{S3_ROOT}/{case.name}/out"
    argv = command(case, origin, target, schema)
    ok = True
    retired: dict[str, int] = {}
    try:
        for step in case.steps:
            before = submitted(db) if db.exists() else 0
            added = 0
            if step in ("add", "append"):
                added = max(1, len(docs) // 10)
                docs |= case.writer(source, start, added)
                if step == "append":  # onto the end of the first file: JSONL only
                    new = source / f"part-{start:07d}.jsonl"
                    first = min(source.glob("*.jsonl"))
                    with first.open("ab") as out:
                        out.write(new.read_bytes())
                    new.unlink()
                start += added
            if step == "shrink":  # the last tenth of the first JSONL file's lines removed
                first = min(source.glob("*.jsonl"))
                lines = first.read_bytes().splitlines(keepends=True)
                kept = lines[: len(lines) - len(lines) // 10]
                first.write_bytes(b"".join(kept))
                cut = {orjson.loads(line)["id"] for line in lines[len(kept) :]}
                rows = read_results(str(output))
                retired |= {r["custom_id"]: r["attempts"] for r in rows if r["doc_id"] in cut}
                docs = {k: v for k, v in docs.items() if k not in cut}
            step_argv = [*argv, "--shard-size", "1000"] if step == "reshard" else argv
            started = time.monotonic()
            if step.startswith("kill"):
                batches = int(step.removeprefix("kill") or 1)
                note = kill_mid_wait(argv, env, output, work / "run.log", batches)
                print(
                    f"  {case.name:28} {step:6} {time.monotonic() - started:7.1f}s  {note}",
                    flush=True,
                )
                continue
            with (work / "run.log").open("ab") as out:
                code = subprocess.run(
                    step_argv, env=env, stdout=out, stderr=subprocess.STDOUT
                ).returncode
            seconds = time.monotonic() - started
            problems = [] if code == 0 else [f"exit {code} (see {work / 'run.log'})"]
            if code == 0:
                problems += check(
                    target, docs, db, "structured" in case.name, retired, case.max_attempts()
                )
            paid = submitted(db) - before
            if step in ("rerun", "reshard", "shrink") and paid:
                problems.append(f"the rerun submitted {paid} requests")
            if added and not added <= paid < 2 * added:
                problems.append(f"{added} documents added, {paid} requests submitted")
            verdict = "PASS" if not problems else "FAIL"
            ok = ok and not problems
            print(
                f"{verdict} {case.name:28} {step:6} {seconds:7.1f}s docs={len(docs):,} "
                f"submitted={paid:,} load={os.getloadavg()[0]:.2f} {'; '.join(problems)}",
                flush=True,
            )
    finally:
        stop(emulator)
    return ok


@contextlib.contextmanager
def moto_s3() -> Iterator[dict[str, str]]:
    """moto's S3 server on loopback with a bucket; yields the environment a user would set, which
    this process takes too."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    aws = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "scale-check",
        "AWS_SECRET_ACCESS_KEY": "scale-check-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    os.environ.update(aws)
    try:
        fs, _ = fsspec.core.url_to_fs(S3_ROOT)
        fs.mkdir(S3_ROOT.removeprefix("s3://"))
        yield aws
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", help="comma-separated case names (default: all)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every size by this")
    parser.add_argument("--keep", metavar="DIR", help="work here and keep it, not in a temp dir")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    opts = parser.parse_args()
    if opts.list:
        for case in CASES:
            print(
                f"{case.name:28} files={case.files} {' '.join(case.options)}"
                f"{' faults' if case.faults else ''} steps={','.join(case.steps)}"
            )
        return 0
    chosen = [c for c in CASES if not opts.cases or c.name in opts.cases.split(",")]
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(opts.keep) if opts.keep else Path(scratch)
        root.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "ANTHROPIC_"))}
        env |= {"PREFECT_HOME": str(root / "client-home"), "COLUMNS": "200"}
        with prefect_server(root / "server-home", ui=False) as api:
            env["PREFECT_API_URL"] = api
            with contextlib.ExitStack() as stack:
                if any(case.s3 for case in chosen):
                    env |= stack.enter_context(moto_s3())
                results = [run_case(case, root, env, opts.scale) for case in chosen]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
