"""Counts in logs, refusals and the summary read as English: one of a thing, or several."""

from __future__ import annotations

import pytest

from batchline.wording import counted


@pytest.mark.parametrize(
    ("count", "noun", "words"),
    [
        (1, "batch", "1 batch"),
        (2, "batch", "2 batches"),
        (0, "request", "0 requests"),
        (1, "document", "1 document"),
        (12_345, "row", "12,345 rows"),
        (3, "invalid document", "3 invalid documents"),
    ],
)
def test_counted(count: int, noun: str, words: str) -> None:
    assert counted(count, noun) == words
