"""The request-state index: latest outcome, attempts and batch of every request, in SQLite.

Derived, never the source of truth: everything in it follows from the ledger, the collected
results and the manifest under the output root. It records which ledger entries (by key and
batch id), which collected files (by size) and which manifest (by stamp and part sizes) it has
absorbed; opening it absorbs only what is new since, and rebuilds it from scratch when something
it absorbed has changed or gone (an adoption undone, a collected file deleted, a new manifest) or
when the file itself is missing or unreadable. So a round costs the requests of that round's
batches, not every request of the run, and no Python object per request outlives a part or a
batch.

Each row also holds the request's submission kind (``retry.submission_kind`` for the settings it
was computed with), kept up to date on every change, so counting and selecting pending requests
reads an index of ids, never the manifest's request bodies.

SQLite (stdlib, one file, B-tree updates in place) rather than Parquet/Arrow state files: an
Arrow table must be rewritten whole on every update, which makes a run's rounds cost rounds x all
requests again (see bench/index_bench.py and the README's Performance section).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Iterator, Mapping
from pathlib import Path

import orjson
import pyarrow as pa

from batchline.config import RetryPolicy
from batchline.ledger import Ledger
from batchline.retry import DEFAULT_POLICY, RequestState, Submission, submission_kind
from batchline.storage import STAMP, OutputLayout, part_name

# Bumped when the tables change: an index of another version is rebuilt.
VERSION = "3"
_NAME = ".request-index.sqlite"
# Rows per executemany: bounds the Python objects alive at once.
_CHUNK = 50_000
# A manifest part is kept as one integer, shard * _PIECES + piece, in source order. Shard and
# piece numbers outgrow their five digits (--shard-size 1 over a long file), so neither is capped
# at 100,000.
_PIECES = 1_000_000_000
# SQLite's page cache, negative = KiB: the index is on disk, not in the process.
_CACHE_KIB = 64 * 1024

_TABLES = """
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE entries (key TEXT PRIMARY KEY, batch_id TEXT NOT NULL);
CREATE TABLE collected (batch_id TEXT PRIMARY KEY, size INTEGER NOT NULL);
CREATE TABLE requests (
    custom_id TEXT PRIMARY KEY,
    doc_id TEXT,
    part INTEGER,
    row INTEGER,
    manifest_hash TEXT,
    params_hash TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    batch_id TEXT,
    status TEXT,
    error_type TEXT,
    kind TEXT
) WITHOUT ROWID;
"""


def index_path(layout: OutputLayout) -> Path:
    """Where the index of ``layout`` lives: beside the ledger locally, in a cache dir for S3.

    SQLite needs a local file; for an object-store output each machine keeps its own copy,
    which is correct because the index is rebuilt from the ledger wherever it is missing.
    """
    if "://" not in layout.root:
        return Path(layout.path("ledger", _NAME))
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha256(layout.root.encode()).hexdigest()[:24]
    return cache / "batchline" / "request-index" / f"{digest}.sqlite"


class RequestIndex:
    """An open, up-to-date index; use as a context manager (see ``open_index``)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> RequestIndex:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()

    def state(self, custom_id: str) -> RequestState | None:
        """What the ledger and collected results say about ``custom_id``; None if never sent."""
        row = self.db.execute(
            "SELECT params_hash, attempts, batch_id, status, error_type FROM requests "
            "WHERE custom_id = ? AND params_hash IS NOT NULL",
            (custom_id,),
        ).fetchone()
        return None if row is None else RequestState(*row)

    def count_pending(self, kind: Submission | None) -> int:
        """Manifest requests to submit, of ``kind`` (None: both)."""
        where, args = _kind_filter(kind)
        return int(
            self.db.execute(f"SELECT count(*) FROM requests WHERE {where}", args).fetchone()[0]
        )

    def any_pending(self, kind: Submission | None) -> bool:
        """Whether a manifest request is to be submitted: one seek, where a count reads them all."""
        where, args = _kind_filter(kind)
        return (
            self.db.execute(f"SELECT 1 FROM requests WHERE {where} LIMIT 1", args).fetchone()
            is not None
        )

    def pending_rows(self, kind: Submission | None) -> Iterator[tuple[str, list[int], list[str]]]:
        """(manifest part name, its row numbers to submit, their custom_ids), in manifest order.

        Each next part is one seek in the index of pending requests, so a round that submits
        the first few parts' worth reads no more of it than that.
        """
        kinds: tuple[Submission, ...] = ("new", "retry") if kind is None else (kind,)
        marks = ",".join("?" * len(kinds))
        part = -1
        while True:
            starts = [
                self.db.execute(
                    "SELECT min(part) FROM requests WHERE kind = ? AND part > ?", (k, part)
                ).fetchone()[0]
                for k in kinds
            ]
            if all(s is None for s in starts):
                return
            part = min(s for s in starts if s is not None)
            rows = self.db.execute(
                f"SELECT row, custom_id FROM requests WHERE kind IN ({marks}) AND part = ? "
                "ORDER BY row",
                (*kinds, part),
            ).fetchall()
            yield part_name(*divmod(part, _PIECES)), [r for r, _ in rows], [c for _, c in rows]

    def unanswered(self) -> tuple[int, list[str]]:
        """How many manifest requests have no collected result for their params; three doc_ids."""
        where = "manifest_hash IS NOT NULL AND (params_hash IS NOT manifest_hash OR status IS NULL)"
        count = self.db.execute(f"SELECT count(*) FROM requests WHERE {where}").fetchone()[0]
        first = self.db.execute(f"SELECT doc_id FROM requests WHERE {where} LIMIT 3").fetchall()
        return int(count), [d for (d,) in first]

    def answering_batches(self) -> set[str]:
        """Batches that hold the latest result of some manifest request."""
        rows = self.db.execute(
            f"SELECT DISTINCT batch_id FROM requests WHERE {_ANSWERED} AND batch_id IS NOT NULL"
        )
        return {b for (b,) in rows}

    def answered_by(self, batch_id: str) -> pa.Table:
        """custom_id, doc_id and attempts of the requests whose latest answer is in ``batch_id``."""
        rows = self.db.execute(
            f"SELECT custom_id, doc_id, attempts FROM requests WHERE batch_id = ? AND {_ANSWERED}",
            (batch_id,),
        ).fetchall()
        columns = list(zip(*rows, strict=True)) if rows else [(), (), ()]
        return pa.table(
            {
                "custom_id": pa.array(columns[0], pa.string()),
                "doc_id": pa.array(columns[1], pa.string()),
                "attempts": pa.array(columns[2], pa.int32()),
            }
        )


_ANSWERED = "manifest_hash IS NOT NULL AND params_hash = manifest_hash AND status IS NOT NULL"


def _kind_filter(kind: Submission | None) -> tuple[str, tuple[str, ...]]:
    if kind is None:
        return "kind IS NOT NULL", ()
    return "kind = ?", (kind,)


class RequestStates(Mapping[str, RequestState]):
    """``Ledger.request_states()``: a read-only mapping over the index, one lookup per key."""

    def __init__(self, index: RequestIndex) -> None:
        self._index = index

    def __getitem__(self, custom_id: str) -> RequestState:
        state = self._index.state(custom_id)
        if state is None:
            raise KeyError(custom_id)
        return state

    def __iter__(self) -> Iterator[str]:
        query = "SELECT custom_id FROM requests WHERE params_hash IS NOT NULL"
        return (c for (c,) in self._index.db.execute(query))

    def __len__(self) -> int:
        query = "SELECT count(*) FROM requests WHERE params_hash IS NOT NULL"
        return int(self._index.db.execute(query).fetchone()[0])


def open_index(layout: OutputLayout, policy: RetryPolicy = DEFAULT_POLICY) -> RequestIndex:
    """The index of ``layout``, brought up to date with its ledger, results and manifest.

    Kinds are those of ``policy``; an index computed under another policy recomputes them.
    Close it (or use it as a context manager) when done.
    """
    path = index_path(layout)
    path.parent.mkdir(parents=True, exist_ok=True)
    db: sqlite3.Connection | None = None
    try:
        db = _connect(path, policy)
        if not _sync(db, layout, policy.fingerprint()):
            db.close()
            db = None
    except sqlite3.DatabaseError:
        # Not a database (a partial or foreign file): derived, so rebuilt like a stale one.
        if db is not None:
            db.close()
        db = None
    if db is None:
        _rebuild(layout, path, policy)
        db = _connect(path, policy)
    return RequestIndex(db)


def _connect(path: Path, policy: RetryPolicy) -> sqlite3.Connection:
    # isolation_level=None: transactions are ours (BEGIN IMMEDIATE), so two processes syncing
    # the same index (Dask workers) take turns instead of both absorbing the same entry.
    db = sqlite3.connect(path, timeout=600, isolation_level=None)
    db.execute(f"PRAGMA cache_size = {-_CACHE_KIB}")

    def kind(
        manifest_hash: str | None,
        params_hash: str | None,
        attempts: int,
        status: str | None,
        error_type: str | None,
    ) -> str | None:
        if manifest_hash is None:
            return None  # not asked for by the current manifest
        state = None
        if params_hash is not None:
            state = RequestState(params_hash, attempts, None, status, error_type)
        return submission_kind(state, manifest_hash, policy)

    db.create_function("submission_kind", 5, kind, deterministic=True)
    return db


_SET_KIND = "kind = submission_kind(manifest_hash, params_hash, attempts, status, error_type)"


def _fingerprints(layout: OutputLayout) -> tuple[list[tuple[str, str]], dict[str, int], str]:
    """What the index must have absorbed: ledger entries with a batch, collected files, manifest."""
    entries = [(e.key, e.batch_id) for e in Ledger(layout).entries() if e.batch_id is not None]
    collected = {
        name.removesuffix(".parquet"): size
        for name, size in layout.sizes("collected").items()
        if name.endswith(".parquet")
    }
    manifest = {
        "stamp": layout.read_json("manifest", STAMP) if layout.exists("manifest", STAMP) else None,
        "parts": layout.sizes("manifest"),
    }
    digest = hashlib.sha256(orjson.dumps(manifest, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return entries, collected, digest


def _sync(db: sqlite3.Connection, layout: OutputLayout, settings: str) -> bool:
    """Absorb what is new; False when the index must be rebuilt instead."""
    db.execute("BEGIN IMMEDIATE")
    try:
        try:
            meta = dict(db.execute("SELECT name, value FROM meta").fetchall())
            absorbed = db.execute("SELECT key, batch_id FROM entries ORDER BY key").fetchall()
            had = dict(db.execute("SELECT batch_id, size FROM collected").fetchall())
        except sqlite3.OperationalError:  # no such table: a new, empty file
            db.execute("ROLLBACK")
            return False
        entries, collected, manifest = _fingerprints(layout)
        current = dict(entries)
        stale = (
            meta.get("version") != VERSION
            or meta.get("manifest") != manifest
            or any(current.get(key) != batch for key, batch in absorbed)
            or any(collected.get(batch) != size for batch, size in had.items())
        )
        done = {key for key, _ in absorbed}
        new = [(key, batch) for key, batch in entries if key not in done]
        # Entries are absorbed in key order (attempts count up in that order): an entry that
        # got its batch after a later one was absorbed means starting over.
        if stale or (new and absorbed and new[0][0] < absorbed[-1][0]):
            db.execute("ROLLBACK")
            return False
        _absorb(db, layout, new, collected, had)
        if meta.get("settings") != settings:
            db.execute(f"UPDATE requests SET {_SET_KIND}")
            db.execute("INSERT OR REPLACE INTO meta VALUES ('settings', ?)", (settings,))
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return True


def _rebuild(layout: OutputLayout, path: Path, policy: RetryPolicy) -> None:
    """A new index from the manifest, the ledger and the collected files, swapped in whole."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    db = _connect(tmp, policy)
    try:
        # A half-built file is thrown away, never opened: no journal needed while building.
        db.execute("PRAGMA journal_mode = OFF")
        db.execute("PRAGMA synchronous = OFF")
        db.executescript(_TABLES)
        db.execute("BEGIN")
        entries, collected, manifest = _fingerprints(layout)
        _absorb_manifest(db, layout)
        db.execute("CREATE INDEX requests_by_batch ON requests (batch_id)")
        # Each absorbed batch sets its own requests' kinds: the rest are still 'new'.
        _absorb(db, layout, entries, collected, {})
        db.execute("CREATE INDEX pending ON requests (kind, part, row) WHERE kind IS NOT NULL")
        db.executemany(
            "INSERT INTO meta VALUES (?, ?)",
            [("version", VERSION), ("manifest", manifest), ("settings", policy.fingerprint())],
        )
        db.execute("COMMIT")
    finally:
        db.close()
    os.replace(tmp, path)
    for suffix in ("-journal", "-wal", "-shm"):  # leftovers of the file just replaced
        path.with_name(path.name + suffix).unlink(missing_ok=True)


def _part_number(name: str) -> int:
    """``part-SSSSS-PPPPP.parquet`` as one integer: every piece of a shard its own number."""
    shard, piece = name.removeprefix("part-").removesuffix(".parquet").split("-")
    return int(shard) * _PIECES + int(piece)


def _absorb_manifest(db: sqlite3.Connection, layout: OutputLayout) -> None:
    """Every manifest request, inserted in custom_id order: appends to the table's B-tree
    instead of scattering rows across it (the secondary indexes come after)."""
    db.execute(
        "CREATE TEMP TABLE staged (custom_id TEXT, doc_id TEXT, part INTEGER, row INTEGER, "
        "manifest_hash TEXT)"
    )
    for name in layout.names("manifest", ".parquet"):
        part = _part_number(name)
        table = layout.read_table("manifest", name, columns=["custom_id", "doc_id", "params_hash"])
        for offset in range(0, table.num_rows, _CHUNK):
            chunk = table.slice(offset, _CHUNK)
            db.executemany(
                "INSERT INTO staged VALUES (?, ?, ?, ?, ?)",
                zip(
                    chunk.column("custom_id").to_pylist(),
                    chunk.column("doc_id").to_pylist(),
                    [part] * chunk.num_rows,
                    range(offset, offset + chunk.num_rows),
                    chunk.column("params_hash").to_pylist(),
                    strict=True,
                ),
            )
    # Never submitted yet, so every one is 'new' (submission_kind of no state).
    db.execute(
        "INSERT INTO requests (custom_id, doc_id, part, row, manifest_hash, kind) "
        "SELECT *, 'new' FROM staged ORDER BY custom_id"
    )
    db.execute("DROP TABLE staged")


def _absorb(
    db: sqlite3.Connection,
    layout: OutputLayout,
    entries: list[tuple[str, str]],
    collected: dict[str, int],
    had: dict[str, int],
) -> None:
    """Absorb ledger ``entries`` (key order), then collected files not absorbed before."""
    for key, batch_id in entries:
        # In the B-tree's (custom_id) order: a source whose ids come out of order then costs
        # what an ordered one does (100,000 shuffled ids: 1.8 s unsorted, 1.1 s sorted).
        ids = layout.read_table("ledger", f"{key}.parquet").sort_by("custom_id")
        for offset in range(0, ids.num_rows, _CHUNK):
            chunk = ids.slice(offset, _CHUNK)
            # Same params: one more attempt; new params: a new request, attempt one.
            db.executemany(
                "INSERT INTO requests (custom_id, params_hash, attempts, batch_id) "
                "VALUES (?, ?, 1, ?) ON CONFLICT (custom_id) DO UPDATE SET "
                "attempts = CASE WHEN params_hash IS excluded.params_hash "
                "THEN attempts + 1 ELSE 1 END, "
                "params_hash = excluded.params_hash, batch_id = excluded.batch_id, "
                "status = NULL, error_type = NULL",
                zip(
                    chunk.column("custom_id").to_pylist(),
                    chunk.column("params_hash").to_pylist(),
                    [batch_id] * chunk.num_rows,
                    strict=True,
                ),
            )
        db.execute(f"UPDATE requests SET {_SET_KIND} WHERE batch_id = ?", (batch_id,))
        db.execute("INSERT INTO entries VALUES (?, ?)", (key, batch_id))
    held = {b for (b,) in db.execute("SELECT batch_id FROM entries")}
    for batch_id, size in sorted(collected.items()):
        if batch_id in had or batch_id not in held:
            continue
        # Results come in any order; sorted, the updates walk the B-tree in order (100,000:
        # 0.6 s against 0.8 s).
        outcome = layout.read_table(
            "collected", f"{batch_id}.parquet", columns=["custom_id", "status", "error_type"]
        ).sort_by("custom_id")
        for offset in range(0, outcome.num_rows, _CHUNK):
            chunk = outcome.slice(offset, _CHUNK)
            # Only where this batch is still the latest: a later attempt supersedes it.
            db.executemany(
                "UPDATE requests SET status = ?, error_type = ? "
                "WHERE custom_id = ? AND batch_id = ?",
                zip(
                    chunk.column("status").to_pylist(),
                    chunk.column("error_type").to_pylist(),
                    chunk.column("custom_id").to_pylist(),
                    [batch_id] * chunk.num_rows,
                    strict=True,
                ),
            )
        # A succeeded answer leaves the kind as the submit set it (no retry; 'new' if the
        # manifest now asks otherwise): only the other outcomes can make a request a retry.
        db.execute(
            f"UPDATE requests SET {_SET_KIND} WHERE batch_id = ? AND status IS NOT 'succeeded'",
            (batch_id,),
        )
        db.execute("INSERT INTO collected VALUES (?, ?)", (batch_id, size))
