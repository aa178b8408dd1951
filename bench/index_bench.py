"""Benchmark: the request-state index's engine, SQLite against Arrow/Parquet state files.

    python bench/index_bench.py [--requests 1000000] [--batch 100000]

Both hold one row per request (custom_id, params_hash, attempts, batch_id, status) on disk and
take the same round: absorb a batch's ledger ids (a new attempt of each) and then its results.
SQLite (batchline/request_index.py, the engine batchline uses) updates rows in place; the Arrow
side must read, join and rewrite the whole state file, so its round grows with the run. Also
times a full rebuild of the real index from a synthetic output and a pending count. Times are
CPU seconds of this process (time.process_time), so that a machine shared with other work still
gives comparable figures; SQLite's I/O is to the page cache.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batchline import schemas
from batchline.collect import write_collected
from batchline.ledger import Ledger
from batchline.request_index import index_path, open_index
from batchline.storage import OutputLayout, part_name


def synthetic_output(root: Path, requests: int, batch: int, part_size: int = 10_000) -> str:
    """A manifest of ``requests`` and one submitted, collected batch of the first ``batch``."""
    layout = OutputLayout(str(root))
    ids = [f"doc-{i}-{i * 7919 % 1_000_003:022x}" for i in range(requests)]
    for number, start in enumerate(range(0, requests, part_size)):
        chunk = ids[start : start + part_size]
        n = len(chunk)
        table = pa.table(
            {
                "custom_id": chunk,
                "doc_id": chunk,
                "params_json": ["{}"] * n,
                "params_hash": ["h"] * n,
                "request_bytes": [100] * n,
                "estimated_input_tokens": [1] * n,
                "model": ["m"] * n,
                "max_tokens": [1] * n,
            },
            schema=schemas.MANIFEST,
        )
        layout.write_table("manifest", part_name(number), table)
    submit_and_collect(layout, ids[:batch], "b0")
    return layout.root


def submit_and_collect(layout: OutputLayout, ids: list[str], batch_id: str) -> None:
    ledger = Ledger(layout)
    n = len(ids)
    table = pa.table({"custom_id": ids, "params_hash": ["h"] * n, "request_bytes": [100] * n})
    entry = ledger.record_intent(table)
    now = datetime.now(UTC)
    ledger.record_batch(entry, batch_id, now, now + timedelta(days=1), adopted=False)
    line = b'{"custom_id":"%s","result":{"type":"expired"}}'
    write_collected(layout, batch_id, (line % c.encode() for c in ids), set(ids))


def sqlite_side(root: str, requests: int, batch: int) -> None:
    layout = OutputLayout(root)
    started = time.process_time()
    with open_index(layout) as index:
        pending = index.count_pending(None)
    print(f"sqlite: rebuild from {requests:,} requests: {time.process_time() - started:.1f} s CPU")
    started = time.process_time()
    with open_index(layout) as index:
        assert index.count_pending("retry") == batch
        assert index.count_pending(None) == pending
        first = next(index.pending_rows(None))
    print(f"sqlite: open, count pending, first part: {time.process_time() - started:.2f} s CPU")
    ids = [f"doc-{i}-{i * 7919 % 1_000_003:022x}" for i in range(batch)]
    submit_and_collect(layout, ids, "b1")
    started = time.process_time()
    with open_index(layout) as index:
        index.count_pending(None)
    seconds, size_mb = time.process_time() - started, index_path(layout).stat().st_size / 1e6
    print(f"sqlite: round of {batch:,} ids + results: {seconds:.1f} s CPU, {size_mb:.0f} MB")
    assert first[0] == part_name(0)


def arrow_side(scratch: Path, requests: int, batch: int) -> None:
    state_file = scratch / "state.parquet"
    ids = pa.array([f"doc-{i}-{i * 7919 % 1_000_003:022x}" for i in range(requests)])
    n = len(ids)
    state = pa.table(
        {
            "custom_id": ids,
            "params_hash": pa.repeat("h", n),
            "attempts": pa.repeat(pa.scalar(1, pa.int32()), n),
            "batch_id": pa.repeat("b0", n),
            "status": pa.repeat("expired", n),
        }
    )
    pq.write_table(state, state_file)
    updates = pa.table({"custom_id": ids.slice(0, batch), "new_batch": pa.repeat("b1", batch)})
    started = time.process_time()
    state = pq.read_table(state_file)
    joined = state.join(updates, "custom_id", join_type="left outer")
    hit = pc.is_valid(joined.column("new_batch"))
    attempts = pc.if_else(hit, pc.add(joined.column("attempts"), 1), joined.column("attempts"))
    joined = joined.set_column(2, "attempts", attempts.cast(pa.int32()))
    batch_ids = pc.if_else(hit, joined.column("new_batch"), joined.column("batch_id"))
    joined = joined.set_column(3, "batch_id", batch_ids).drop(["new_batch"])
    pq.write_table(joined, state_file)
    print(
        f"arrow: one round ({batch:,} ids) over {requests:,} requests: "
        f"{time.process_time() - started:.1f} s CPU (rewrites the whole state; results not applied)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=100_000)
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = synthetic_output(Path(scratch) / "out", opts.requests, opts.batch)
        sqlite_side(root, opts.requests, opts.batch)
        arrow_side(Path(scratch), opts.requests, opts.batch)


if __name__ == "__main__":
    main()
