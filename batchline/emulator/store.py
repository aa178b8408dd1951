"""All emulator state in one SQLite file: batches, their requests and results, cache, counters.

One connection, guarded by a lock, does every short read and write; a results download opens a
connection of its own, so that streaming a large file neither holds the lock nor sees a batch
change under it (WAL gives it a snapshot).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Generator, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Final, Literal

from batchline.emulator.schedule import BatchRecord, RequestCounts

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL CHECK (state IN ('receiving', 'live', 'deleted')),
    request_count INTEGER NOT NULL DEFAULT 0,
    created_at REAL,
    expires_at REAL,
    processing_seconds REAL,
    requests_per_second REAL,
    cancel_seconds REAL,
    cancel_initiated_at REAL,
    ended_at REAL,
    generated INTEGER NOT NULL DEFAULT 0,
    generated_at REAL,
    succeeded INTEGER NOT NULL DEFAULT 0,
    errored INTEGER NOT NULL DEFAULT 0,
    canceled INTEGER NOT NULL DEFAULT 0,
    expired INTEGER NOT NULL DEFAULT 0,
    results_bytes INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS requests (
    batch_seq INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    custom_id TEXT NOT NULL,
    sort_key INTEGER NOT NULL,
    body BLOB NOT NULL,
    result_type TEXT,
    line BLOB,
    PRIMARY KEY (batch_seq, idx)
);
CREATE INDEX IF NOT EXISTS requests_by_sort_key ON requests (batch_seq, sort_key);
CREATE TABLE IF NOT EXISTS prompt_cache (key TEXT PRIMARY KEY, expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS custom_id_counts (
    custom_id TEXT PRIMARY KEY,
    batches INTEGER NOT NULL
);
"""

_BATCH_COLUMNS: Final = (
    "seq, id, request_count, created_at, expires_at, processing_seconds, requests_per_second, "
    "cancel_seconds, cancel_initiated_at, ended_at, generated, generated_at, succeeded, errored, "
    "canceled, expired, results_bytes"
)

#: Counters reported by the stats endpoint, in the order they are reported.
STAT_COUNTERS: Final = (
    "http_calls",
    "create_calls",
    "batches_created",
    "requests_submitted",
    "results_downloads",
    "http_faults",
)

_RESULT_CHUNK_ROWS: Final = 1000

Outcome = tuple[int, str, bytes]
"""(request index, result type, JSONL line) of a processed request."""


def _record(row: tuple[Any, ...]) -> BatchRecord:
    return BatchRecord(
        seq=row[0],
        id=row[1],
        request_count=row[2],
        created_at=row[3],
        expires_at=row[4],
        processing_seconds=row[5],
        requests_per_second=row[6],
        cancel_seconds=row[7],
        cancel_initiated_at=row[8],
        ended_at=row[9],
        generated=row[10],
        generated_at=row[11],
        counts=RequestCounts(row[12], row[13], row[14], row[15]),
        results_bytes=row[16],
    )


class Store:
    """Thread-safe access to the emulator's SQLite database."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL is durable across a process crash with WAL; only power loss can drop commits.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(_SCHEMA)
        with self._transaction() as db:
            # Uploads that a previous process did not finish are garbage.
            db.execute(
                "DELETE FROM requests WHERE batch_seq IN "
                "(SELECT seq FROM batches WHERE state = 'receiving')"
            )
            db.execute("DELETE FROM batches WHERE state = 'receiving'")

    def close(self) -> None:
        """Checkpoint and close the database."""
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # Counters

    def bump(self, name: str, by: int = 1) -> int:
        """Add to a counter and return its new value."""
        with self._transaction() as db:
            row = db.execute(
                "INSERT INTO counters (name, value) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value RETURNING value",
                (name, by),
            ).fetchone()
        return int(row[0])

    def stats(self, *, per_custom_id: bool) -> dict[str, Any]:
        """The counters of the stats endpoint, optionally with the per-custom_id map."""
        with self._lock:
            values = dict(self._db.execute("SELECT name, value FROM counters").fetchall())
            stats: dict[str, Any] = {name: values.get(name, 0) for name in STAT_COUNTERS}
            if per_custom_id:
                stats["requests_per_custom_id"] = dict(
                    self._db.execute(
                        "SELECT custom_id, batches FROM custom_id_counts ORDER BY custom_id"
                    ).fetchall()
                )
        return stats

    # Creating a batch: reserve, fill in chunks, then publish or discard

    def reserve_batch(self, batch_id: str) -> int:
        """Start receiving a batch that no reader can see yet; returns its sequence number."""
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO batches (id, state) VALUES (?, 'receiving')", (batch_id,)
            )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def add_requests(self, seq: int, rows: Iterable[tuple[int, str, int, bytes]]) -> None:
        """Store (index, custom_id, sort key, raw JSON) rows of a batch being received."""
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO requests (batch_seq, idx, custom_id, sort_key, body) "
                "VALUES (?, ?, ?, ?, ?)",
                ((seq, *row) for row in rows),
            )

    def discard_batch(self, seq: int) -> None:
        """Forget a batch whose upload was rejected."""
        with self._transaction() as db:
            db.execute("DELETE FROM requests WHERE batch_seq = ?", (seq,))
            db.execute("DELETE FROM batches WHERE seq = ?", (seq,))

    def publish_batch(
        self,
        seq: int,
        *,
        request_count: int,
        created_at: float,
        expires_at: float,
        processing_seconds: float,
        requests_per_second: float | None,
        cancel_seconds: float,
    ) -> BatchRecord:
        """Make a fully received batch visible and count it in the stats."""
        with self._transaction() as db:
            db.execute(
                "UPDATE batches SET state = 'live', request_count = ?, created_at = ?, "
                "expires_at = ?, processing_seconds = ?, requests_per_second = ?, "
                "cancel_seconds = ? WHERE seq = ?",
                (
                    request_count,
                    created_at,
                    expires_at,
                    processing_seconds,
                    requests_per_second,
                    cancel_seconds,
                    seq,
                ),
            )
            db.execute(
                "INSERT INTO custom_id_counts (custom_id, batches) "
                "SELECT custom_id, 1 FROM requests WHERE batch_seq = ? "
                "ON CONFLICT (custom_id) DO UPDATE SET batches = batches + 1",
                (seq,),
            )
            for name, by in (("batches_created", 1), ("requests_submitted", request_count)):
                db.execute(
                    "INSERT INTO counters (name, value) VALUES (?, ?) "
                    "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                    (name, by),
                )
            row = db.execute(f"SELECT {_BATCH_COLUMNS} FROM batches WHERE seq = ?", (seq,))
            return _record(row.fetchone())

    # Reading batches

    def get(self, batch_id: str) -> BatchRecord | None:
        """A visible batch by id."""
        with self._lock:
            row = self._db.execute(
                f"SELECT {_BATCH_COLUMNS} FROM batches WHERE id = ? AND state = 'live'",
                (batch_id,),
            ).fetchone()
        return None if row is None else _record(row)

    def position(self, batch_id: str) -> int | None:
        """Sequence number of a batch for list cursors; deleted batches keep theirs."""
        with self._lock:
            row = self._db.execute(
                "SELECT seq FROM batches WHERE id = ? AND state != 'receiving'", (batch_id,)
            ).fetchone()
        return None if row is None else int(row[0])

    def page(
        self, *, limit: int, after: int | None, before: int | None
    ) -> tuple[list[BatchRecord], bool]:
        """Newest-first page of visible batches older than `after` or newer than `before`.

        Returns the page and whether more batches lie beyond it in the same direction.
        """
        with self._lock:
            if before is not None:
                # The batches just newer than the cursor, nearest first, then shown newest first.
                rows = self._db.execute(
                    f"SELECT {_BATCH_COLUMNS} FROM batches WHERE state = 'live' AND seq > ? "
                    "ORDER BY seq ASC LIMIT ?",
                    (before, limit + 1),
                ).fetchall()
                has_more = len(rows) > limit
                return [_record(row) for row in reversed(rows[:limit])], has_more
            rows = self._db.execute(
                f"SELECT {_BATCH_COLUMNS} FROM batches WHERE state = 'live' AND seq < ? "
                "ORDER BY seq DESC LIMIT ?",
                (after if after is not None else 2**63 - 1, limit + 1),
            ).fetchall()
        return [_record(row) for row in rows[:limit]], len(rows) > limit

    def unfinished(self) -> list[BatchRecord]:
        """Visible batches that have not ended yet, oldest first."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_BATCH_COLUMNS} FROM batches "
                "WHERE state = 'live' AND ended_at IS NULL ORDER BY seq"
            ).fetchall()
        return [_record(row) for row in rows]

    # Changing batches

    def cancel(self, batch_id: str, now: float) -> BatchRecord | None:
        """Initiate cancellation of an unfinished batch (idempotent); returns the batch after."""
        with self._transaction() as db:
            db.execute(
                "UPDATE batches SET cancel_initiated_at = ? WHERE id = ? AND state = 'live' "
                "AND ended_at IS NULL AND cancel_initiated_at IS NULL",
                (now, batch_id),
            )
            row = db.execute(
                f"SELECT {_BATCH_COLUMNS} FROM batches WHERE id = ? AND state = 'live'",
                (batch_id,),
            ).fetchone()
        return None if row is None else _record(row)

    def delete(self, seq: int) -> None:
        """Delete a batch's requests and results; its row stays as a tombstone for cursors."""
        with self._transaction() as db:
            db.execute("DELETE FROM requests WHERE batch_seq = ?", (seq,))
            db.execute("UPDATE batches SET state = 'deleted' WHERE seq = ?", (seq,))

    # Processing

    def pending_requests(self, seq: int, start: int, limit: int) -> list[tuple[int, str, bytes]]:
        """(index, custom_id, raw JSON) of requests from index `start` on, in request order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT idx, custom_id, body FROM requests "
                "WHERE batch_seq = ? AND idx >= ? ORDER BY idx LIMIT ?",
                (seq, start, limit),
            ).fetchall()
        return [(int(idx), str(custom_id), bytes(body)) for idx, custom_id, body in rows]

    def save_outcomes(
        self,
        seq: int,
        outcomes: list[Outcome],
        *,
        generated: int,
        generated_at: float | None,
        cache_changes: dict[str, float],
    ) -> None:
        """Store processed requests' results and the prompt cache entries they touched."""
        with self._transaction() as db:
            db.executemany(
                "UPDATE requests SET result_type = ?, line = ? WHERE batch_seq = ? AND idx = ?",
                ((kind, line, seq, idx) for idx, kind, line in outcomes),
            )
            db.execute(
                "UPDATE batches SET generated = ?, generated_at = ? WHERE seq = ?",
                (generated, generated_at, seq),
            )
            db.executemany(
                "INSERT INTO prompt_cache (key, expires_at) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at",
                cache_changes.items(),
            )

    def finish(
        self,
        record: BatchRecord,
        *,
        ended_at: float,
        processed: int,
        unprocessed: Literal["canceled", "expired"],
    ) -> bool:
        """End a batch: mark requests past `processed` as `unprocessed`, then tally.

        Returns False, changing nothing, if the batch changed since `record` was read (a cancel
        came in), so that the caller can look again.
        """
        with self._transaction() as db:
            current = db.execute(
                "SELECT cancel_initiated_at, ended_at FROM batches WHERE seq = ? "
                "AND state = 'live'",
                (record.seq,),
            ).fetchone()
            if current is None or tuple(current) != (record.cancel_initiated_at, None):
                return False
            db.execute(
                "UPDATE requests SET result_type = ?1, line = CAST(json_object("
                "'custom_id', custom_id, 'result', json_object('type', ?1)) || char(10) AS BLOB) "
                "WHERE batch_seq = ?2 AND idx >= ?3",
                (unprocessed, record.seq, processed),
            )
            tallies = {
                kind: (int(count), int(size))
                for kind, count, size in db.execute(
                    "SELECT result_type, COUNT(*), SUM(LENGTH(line)) FROM requests "
                    "WHERE batch_seq = ? GROUP BY result_type",
                    (record.seq,),
                )
            }
            db.execute(
                "UPDATE batches SET ended_at = ?, succeeded = ?, errored = ?, canceled = ?, "
                "expired = ?, results_bytes = ? WHERE seq = ?",
                (
                    ended_at,
                    tallies.get("succeeded", (0, 0))[0],
                    tallies.get("errored", (0, 0))[0],
                    tallies.get("canceled", (0, 0))[0],
                    tallies.get("expired", (0, 0))[0],
                    sum(size for _, size in tallies.values()),
                    record.seq,
                ),
            )
        return True

    def prompt_cache(self, now: float) -> dict[str, float]:
        """Unexpired prompt cache entries."""
        with self._transaction() as db:
            db.execute("DELETE FROM prompt_cache WHERE expires_at <= ?", (now,))
            return dict(db.execute("SELECT key, expires_at FROM prompt_cache").fetchall())

    def result_lines(self, seq: int) -> Generator[bytes, None, None]:
        """Stream a batch's JSONL results in sort-key order, a few hundred kilobytes at a time."""
        reader = sqlite3.connect(self._path, isolation_level=None)
        try:
            reader.execute("BEGIN")
            cursor = reader.execute(
                "SELECT line FROM requests WHERE batch_seq = ? ORDER BY sort_key", (seq,)
            )
            while rows := cursor.fetchmany(_RESULT_CHUNK_ROWS):
                yield b"".join(row[0] for row in rows)
        finally:
            reader.close()
