"""The request-state index against the ledger it derives from: incremental, rebuilt when stale."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anthropic
import orjson
import pyarrow as pa
import pytest

from batchline import schemas
from batchline.collect import write_collected
from batchline.config import JobConfig, RunError
from batchline.emulator import Emulator
from batchline.ledger import Ledger, LedgerEntry
from batchline.request_index import index_path, open_index
from batchline.retry import RequestState, submission_kind
from batchline.storage import OutputLayout, part_name
from batchline.submit import pending_parts, submit_pending
from tests.support import hello_params


def _manifest(
    layout: OutputLayout, parts: list[list[tuple[str, str]]], names: list[str] | None = None
) -> None:
    """Manifest parts of (custom_id, params_hash); doc_id is the custom_id.

    Without ``names``, two pieces per shard, as a source file longer than a shard gives: each
    piece is its own part.
    """
    for number, part in enumerate(parts):
        rows = [
            {
                "custom_id": cid,
                "doc_id": cid,
                "params_json": "{}",
                "params_hash": ph,
                "request_bytes": 10,
                "estimated_input_tokens": 1,
                "model": "m",
                "max_tokens": 1,
            }
            for cid, ph in part
        ]
        name = names[number] if names else part_name(*divmod(number, 2))
        layout.write_table("manifest", name, schemas.table(rows, schemas.MANIFEST))


def _submit(layout: OutputLayout, batch_id: str, requests: list[tuple[str, str]]) -> LedgerEntry:
    ledger = Ledger(layout)
    table = pa.table(
        {
            "custom_id": [c for c, _ in requests],
            "params_hash": [h for _, h in requests],
            "request_bytes": [10] * len(requests),
        }
    )
    entry = ledger.record_intent(table)
    now = datetime.now(UTC)
    return ledger.record_batch(entry, batch_id, now, now + timedelta(days=1), adopted=False)


def _collect(layout: OutputLayout, batch_id: str, outcomes: dict[str, str]) -> None:
    """outcomes: custom_id → 'succeeded', 'expired' or an error type."""
    lines = []
    for cid, outcome in outcomes.items():
        if outcome in ("succeeded", "expired"):
            result: dict[str, object] = {"type": outcome}
            if outcome == "succeeded":
                result["message"] = {"content": [{"type": "text", "text": "ok"}], "usage": {}}
        else:
            result = {"type": "errored", "error": {"error": {"type": outcome, "message": "x"}}}
        lines.append(orjson.dumps({"custom_id": cid, "result": result}))
    write_collected(layout, batch_id, lines, set(outcomes))


def _reference(layout: OutputLayout) -> dict[str, RequestState]:
    """The states as the ledger states them, computed the slow way: every entry, every file."""
    states: dict[str, RequestState] = {}
    ledger = Ledger(layout)
    for entry in ledger.entries():
        if entry.batch_id is None:
            continue
        for row in ledger.request_ids(entry).to_pylist():
            old = states.get(row["custom_id"])
            same = old is not None and old.params_hash == row["params_hash"]
            attempts = old.attempts + 1 if old is not None and same else 1
            states[row["custom_id"]] = RequestState(row["params_hash"], attempts, entry.batch_id)
        if layout.exists("collected", f"{entry.batch_id}.parquet"):
            table = layout.read_table("collected", f"{entry.batch_id}.parquet")
            for row in table.to_pylist():
                state = states[row["custom_id"]]
                if state.batch_id == entry.batch_id:
                    state.status, state.error_type = row["status"], row["error_type"]
    return states


def _check(layout: OutputLayout, manifest: list[tuple[str, str]]) -> None:
    """The index agrees with the reference: states, and counts and rows of pending requests."""
    expected = _reference(layout)
    states = Ledger(layout).request_states()
    assert dict(states) == expected
    kinds = [submission_kind(expected.get(c), h) for c, h in manifest]
    with open_index(layout) as index:
        for kind in ("new", "retry"):
            assert index.count_pending(kind) == kinds.count(kind)
            assert index.any_pending(kind) == (kind in kinds)
        pending = [(p, r) for p, rows, _ in index.pending_rows(None) for r in rows]
    offsets, start = {}, 0
    for name in sorted(layout.names("manifest", ".parquet")):
        offsets[name] = start
        start += layout.read_table("manifest", name).num_rows
    wanted = [i for i, k in enumerate(kinds) if k is not None]
    assert [offsets[p] + r for p, r in pending] == wanted


def test_index_follows_the_ledger_round_by_round_and_after_deletion(tmp_path: Path) -> None:
    layout = OutputLayout(str(tmp_path / "out"))
    requests = [("a", "h"), ("b", "h"), ("c", "h"), ("d", "h")]
    # Parts of one row: four parts, two shards of two pieces each.
    _manifest(layout, [[request] for request in requests])
    _check(layout, requests)  # nothing submitted: all new

    _submit(layout, "b1", requests[:3])
    _check(layout, requests)  # three in flight, d new
    _collect(layout, "b1", {"a": "succeeded", "b": "overloaded_error", "c": "expired"})
    _check(layout, requests)
    _submit(layout, "b2", [requests[1], requests[2], requests[3]])
    _collect(layout, "b2", {"b": "succeeded", "c": "invalid_request_error", "d": "expired"})
    _check(layout, requests)
    assert Ledger(layout).request_states()["b"] == RequestState("h", 2, "b2", "succeeded", None)

    index_path(layout).unlink()
    _check(layout, requests)  # rebuilt from the ledger: the same answers


def test_index_is_rebuilt_when_what_it_absorbed_changes_or_it_is_garbage(tmp_path: Path) -> None:
    layout = OutputLayout(str(tmp_path / "out"))
    requests = [("a", "h"), ("b", "h")]
    _manifest(layout, [requests])
    _submit(layout, "b1", requests)
    _collect(layout, "b1", {"a": "overloaded_error", "b": "succeeded"})
    _check(layout, requests)

    # A collected file deleted: its requests are in flight again, as the ledger now says.
    layout.fs.rm(layout.path("collected", "b1.parquet"))
    _check(layout, requests)
    assert Ledger(layout).request_states()["a"].status is None

    # An adoption undone: the entry's batch is gone from the ledger, and from the index.
    entry = Ledger(layout).entry_for("b1")
    Ledger(layout).reject_adoption(entry.model_copy(update={"adopted": True}))
    _check(layout, requests)
    assert len(Ledger(layout).request_states()) == 0

    # A new manifest: a changed params_hash is a new request.
    _submit(layout, "b2", requests)
    _collect(layout, "b2", {"a": "succeeded", "b": "succeeded"})
    changed = [("a", "h2"), ("b", "h")]
    _manifest(layout, [changed])
    _check(layout, changed)

    index_path(layout).write_bytes(b"not a database")
    _check(layout, changed)


def test_submit_refuses_an_index_that_points_at_other_requests(tmp_path: Path) -> None:
    layout = OutputLayout(str(tmp_path / "out"))
    requests = [("a", "h"), ("b", "h"), ("c", "h")]
    _manifest(layout, [requests])
    job = JobConfig()
    assert [t.column("custom_id").to_pylist() for t in pending_parts(layout, job)] == [
        ["a", "b", "c"]
    ]

    # A fault the fingerprints cannot see: the index sends a's row to b's request.
    with sqlite3.connect(index_path(layout)) as db:
        db.execute("UPDATE requests SET row = 1 WHERE custom_id = 'a'")
    with pytest.raises(RunError, match=r"disagrees with manifest part-00000-00000\.parquet"):
        list(pending_parts(layout, job))


def test_parts_numbered_past_five_digits_are_each_their_own_part(tmp_path: Path) -> None:
    # --shard-size 1 over a file of 100,001 documents gives piece 100000, whose name has six
    # digits; a folder of 100,000 shards gives shard 100000. Each must stay its own part.
    layout = OutputLayout(str(tmp_path / "out"))
    names = [part_name(0, 10_000), part_name(0, 100_000), part_name(10_000), part_name(100_000)]
    _manifest(layout, [[("a", "h")], [("b", "h")], [("c", "h")], [("d", "h")]], names)
    with open_index(layout) as index:
        pending = sorted((part, ids) for part, _, ids in index.pending_rows(None))
    assert pending == sorted(zip(names, [["a"], ["b"], ["c"], ["d"]], strict=True))
    assert sorted(
        c for t in pending_parts(layout, JobConfig()) for c in t["custom_id"].to_pylist()
    ) == ["a", "b", "c", "d"]


def test_submit_leaves_the_index_holding_its_batches(
    tmp_path: Path, emulator_factory: Callable[..., Emulator]
) -> None:
    """So that the index's work on them overlaps the API's, not the next round's start."""
    layout = OutputLayout(str(tmp_path / "out"))
    params = hello_params(max_tokens=8)
    rows = [
        {
            "custom_id": cid,
            "doc_id": cid,
            "params_json": orjson.dumps(params).decode(),
            "params_hash": "h",
            "request_bytes": 100,
            "estimated_input_tokens": 1,
            "model": "claude-haiku-4-5",
            "max_tokens": 8,
        }
        for cid in ("a", "b", "c")
    ]
    layout.write_table("manifest", part_name(0), schemas.table(rows, schemas.MANIFEST))
    emulator = emulator_factory()
    client = anthropic.Anthropic(api_key="test-key", base_url=emulator.base_url)
    job = JobConfig(max_requests_per_batch=2)

    entries = submit_pending(client, layout, job)

    assert len(entries) == 2
    # Read as the file stands, without open_index (which would absorb them itself).
    with sqlite3.connect(index_path(layout)) as db:
        absorbed = dict(db.execute("SELECT key, batch_id FROM entries").fetchall())
        in_flight = db.execute("SELECT count(*) FROM requests WHERE batch_id IS NOT NULL")
        assert in_flight.fetchone()[0] == 3
    assert absorbed == {e.key: e.batch_id for e in entries}
