"""Correctness at scale: `batchline run` over a matrix of source shapes and sizes, each result
checked against the emulator's own record of what was asked and answered.

    python bench/scale_check.py [--cases NAME,...] [--scale 1.0] [--list]

Each case writes its source, starts its own emulator process (its state in an SQLite file this
script reads afterwards), and runs the CLI as a user types it against one shared Prefect server,
in steps: a run, a rerun (must submit nothing), 10% more documents then a rerun (must submit only
those), or a run SIGKILLed while it waits then the same command again. After every step:

- exit status 0 and exactly one row per document of the source, each custom_id once;
- every request the emulator holds for a row's custom_id asks about that row's document (its
  prompt is the document's text), and a succeeded row's text and batch_id are those of the
  emulator's one succeeded result for that custom_id;
- paid once: the emulator received each custom_id exactly as often as the row's `attempts`, and
  requests_submitted is their sum (no batch is ever paid twice).

None of these checks uses batchline's code: they read the Parquet and the emulator's database.
Prints one PASS/FAIL line per step with its figures; exit status 1 when any step failed.
"""

from __future__ import annotations

import argparse
import csv
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

# Run as a script, Python puts this file's folder on the path; deployments/ is not installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from deployments.local import prefect_server, start_emulator, stop

FAULTS = ("--error-rate", "overloaded_error=0.05", "--expire-rate", "0.03")
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


def check(output: Path, docs: Docs, db: Path, structured: bool) -> list[str]:
    """Every failed invariant, as a line; empty when the output is right."""
    problems: list[str] = []
    table = (
        ds.dataset(output / "results")
        .to_table(columns=["doc_id", "custom_id", "status", "text", "attempts", "batch_id"])
        .to_pylist()
    )
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
        if row["status"] != "succeeded":
            not_ok += 1
        if row["status"] == "invalid":
            continue
        requests = seen.get(row["custom_id"], [])
        attempts_sum += row["attempts"] or 0
        if len(requests) != row["attempts"]:
            wrong_paid += 1
        if any(prompt_of(body) != docs.get(row["doc_id"]) for _, body, _ in requests):
            wrong_doc += 1
        if row["status"] == "succeeded":
            answers = [
                (batch, orjson.loads(line)["result"])
                for batch, _, line in requests
                if line and orjson.loads(line)["result"]["type"] == "succeeded"
            ]
            texts = [
                "".join(b["text"] for b in r["message"]["content"] if b["type"] == "text")
                for _, r in answers
            ]
            if len(answers) != 1 or texts[0] != row["text"]:
                wrong_text += 1
            elif answers[0][0] != row["batch_id"]:
                wrong_batch += 1
            elif not structured and not row["text"].startswith(
                "Emulated reply to: " + docs[row["doc_id"]][:40]
            ):
                wrong_text += 1
    for name, count in [
        ("rows whose requests asked about another document", wrong_doc),
        ("succeeded rows whose text is not their one succeeded answer", wrong_text),
        ("rows whose batch_id is not the batch that answered", wrong_batch),
        ("rows whose attempts differ from what the emulator received", wrong_paid),
    ]:
        if count:
            problems.append(f"{count} {name}")
    if counters.get("requests_submitted", 0) != attempts_sum:
        problems.append(
            f"requests_submitted {counters.get('requests_submitted')} != sum of attempts "
            f"{attempts_sum}"
        )
    rows_not_in_table = set(seen) - set(customs)
    if rows_not_in_table:
        problems.append(f"{len(rows_not_in_table)} custom_ids paid for that no row holds")
    if not_ok and not structured:
        problems.append(f"{not_ok} rows did not succeed")
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


def command(case: Case, source: Path, output: Path, schema: Path) -> list[str]:
    extra = ["--output-schema", str(schema)] if "structured" in case.name else []
    return [
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
        "2",
        *case.options,
        *extra,
    ]


def kill_mid_wait(argv: list[str], env: dict[str, str], output: Path, log: Path) -> str:
    """Start the run, SIGKILL its process group once a batch is recorded in the ledger."""
    with log.open("ab") as out:
        process = subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and process.poll() is None:
            entries = (
                list((output / "ledger").glob("*.json")) if (output / "ledger").exists() else []
            )
            if any(orjson.loads(p.read_bytes()).get("batch_id") for p in entries):
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
        *options, *(FAULTS if case.faults else ()), log=work / "emulator.log"
    )
    env = env | {"ANTHROPIC_BASE_URL": url, "ANTHROPIC_API_KEY": "scale-check"}
    argv = command(case, source, output, schema)
    ok = True
    try:
        for step in case.steps:
            before = submitted(db) if db.exists() else 0
            added = 0
            if step == "add":
                added = max(1, len(docs) // 10)
                docs |= case.writer(source, start, added)
                start += added
            started = time.monotonic()
            if step == "kill":
                note = kill_mid_wait(argv, env, output, work / "run.log")
                print(
                    f"  {case.name:28} {step:6} {time.monotonic() - started:7.1f}s  {note}",
                    flush=True,
                )
                continue
            with (work / "run.log").open("ab") as out:
                code = subprocess.run(
                    argv, env=env, stdout=out, stderr=subprocess.STDOUT
                ).returncode
            seconds = time.monotonic() - started
            problems = [] if code == 0 else [f"exit {code} (see {work / 'run.log'})"]
            if code == 0:
                problems += check(output, docs, db, "structured" in case.name)
            paid = submitted(db) - before
            if step == "rerun" and paid:
                problems.append(f"the rerun submitted {paid} requests")
            if step == "add" and not added <= paid < 2 * added:
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
            results = [run_case(case, root, env, opts.scale) for case in chosen]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
