"""A compact set of ids that spans a run's shards, for the duplicate checks of load and build.

A Python set of every doc_id or custom_id costs about 100 bytes an id, a gigabyte at ten million
documents. This one keeps a 128-bit hash of each id (16 bytes: two SipHashes) in sorted numpy
runs, merged like a binary counter so that adding a shard costs its own size times a logarithm.
Two ids are taken as one only when both 64-bit halves agree, a chance of about 1e-25 at ten
million ids (custom_ids rest on an 88-bit hash already).

The halves are Python's own string hash: SipHash under a key drawn once per process, as fast as
pandas' vectorized hash. A set lives in one process, so one key serves every id it compares.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

_Keys = npt.NDArray[np.uint64]
# Prefixed, an id is a second input to the same keyed hash: a second, independent 64-bit half.
_LOW_PREFIX = "\x00"


class SeenIds:
    """Use as a context manager; ``first_seen`` marks which ids of a shard are new."""

    def __init__(self) -> None:
        # Runs of (high, low) halves sorted by high, largest first.
        self._runs: list[tuple[_Keys, _Keys]] = []

    def __enter__(self) -> SeenIds:
        return self

    def __exit__(self, *_: object) -> None:
        self._runs.clear()

    def first_seen(self, ids: Sequence[str]) -> list[bool]:
        """For each id in order, whether it is its first appearance (in earlier calls or here)."""
        high = _halves(ids)
        low = _halves([_LOW_PREFIX + i for i in ids])
        before = np.zeros(len(ids), dtype=bool)
        for run_high, run_low in self._runs:
            before |= _contains(run_high, run_low, high, low)
        # Within the shard, the first of equal keys counts; the others are repeats.
        order = np.lexsort((low, high))
        repeat = np.zeros(len(ids), dtype=bool)
        same = (high[order][1:] == high[order][:-1]) & (low[order][1:] == low[order][:-1])
        repeat[order[1:][same]] = True
        first = ~before & ~repeat
        self._add(high[first], low[first])
        return [bool(f) for f in first]

    def _add(self, high: _Keys, low: _Keys) -> None:
        run = _sorted(high, low)
        while self._runs and len(self._runs[-1][0]) <= len(run[0]):
            last = self._runs.pop()
            run = _sorted(np.concatenate([last[0], run[0]]), np.concatenate([last[1], run[1]]))
        self._runs.append(run)


def _halves(ids: Sequence[str]) -> _Keys:
    return np.fromiter(map(hash, ids), dtype=np.int64, count=len(ids)).view(np.uint64)


def _sorted(high: _Keys, low: _Keys) -> tuple[_Keys, _Keys]:
    """Both halves ordered by the high one (numpy sorts integers by radix: linear time)."""
    order = np.argsort(high, kind="stable")
    return high[order], low[order]


def _contains(run_high: _Keys, run_low: _Keys, high: _Keys, low: _Keys) -> npt.NDArray[np.bool_]:
    """Which (high, low) keys are in a run sorted by its high halves."""
    # Searching in sorted order walks the run once instead of jumping about it.
    order = np.argsort(high, kind="stable")
    start = np.empty(len(high), dtype=np.intp)
    start[order] = np.searchsorted(run_high, high[order])
    hit = start < len(run_high)
    hit[hit] = run_high[start[hit]] == high[hit]
    found = np.zeros(len(high), dtype=bool)
    # Equal high halves are rare (a repeated id, or 1 in 2**64): compare their low halves.
    for i in np.flatnonzero(hit):
        stop = int(np.searchsorted(run_high, high[i], side="right"))
        found[i] = bool(np.any(run_low[start[i] : stop] == low[i]))
    return found
