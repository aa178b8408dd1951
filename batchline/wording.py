"""Counts as a person reads them, in logs, refusals and the run's summary: 1 batch, 2 batches."""

from __future__ import annotations


def counted(count: int, noun: str) -> str:
    """``count`` with thousands separators and ``noun``, plural unless the count is one.

    Enough English for the nouns it is given: batch, document, file, part, request, result,
    row, shard.
    """
    if count == 1:
        return f"1 {noun}"
    plural = noun + "es" if noun.endswith(("ch", "sh", "s", "x")) else noun + "s"
    return f"{count:,} {plural}"
