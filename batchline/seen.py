"""A set of ids that spans a run's shards on disk, for the duplicate checks of load and build.

A Python set of every doc_id or custom_id costs about 100 bytes an id, a gigabyte at ten million
documents; this one is a scratch SQLite file that lives as long as the step, and is asked one
shard at a time.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from collections.abc import Sequence
from types import TracebackType

# Under SQLite's default limit of host parameters in one statement (32766).
_PER_QUERY = 30_000


class SeenIds:
    """Use as a context manager; ``first_seen`` marks which ids of a shard are new."""

    def __init__(self) -> None:
        fd, self._path = tempfile.mkstemp(prefix="batchline-seen-", suffix=".sqlite")
        os.close(fd)
        self._db = sqlite3.connect(self._path, isolation_level=None)
        # Scratch data: a crash loses nothing that is not rebuilt by running the step again.
        self._db.execute("PRAGMA journal_mode = OFF")
        self._db.execute("PRAGMA synchronous = OFF")
        self._db.execute("CREATE TABLE seen (id TEXT PRIMARY KEY) WITHOUT ROWID")

    def __enter__(self) -> SeenIds:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._db.close()
        os.remove(self._path)

    def first_seen(self, ids: Sequence[str]) -> list[bool]:
        """For each id in order, whether it is its first appearance (in earlier calls or here)."""
        before: set[str] = set()
        for start in range(0, len(ids), _PER_QUERY):
            chunk = ids[start : start + _PER_QUERY]
            marks = ",".join("?" * len(chunk))
            query = f"SELECT id FROM seen WHERE id IN ({marks})"
            before.update(i for (i,) in self._db.execute(query, chunk))
        fresh: set[str] = set()
        first = []
        for i in ids:
            new = i not in before and i not in fresh
            if new:
                fresh.add(i)
            first.append(new)
        # Sorted, so the inserts walk the B-tree in order.
        self._db.executemany("INSERT INTO seen VALUES (?)", ((i,) for i in sorted(fresh)))
        return first
