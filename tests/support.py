"""Helpers shared by the test modules."""

from __future__ import annotations

from pathlib import Path


def write_documents(folder: Path, count: int, start: int = 0) -> dict[str, str]:
    """``count`` distinct text documents named doc-NNNN.txt; returns doc_id → text."""
    folder.mkdir(parents=True, exist_ok=True)
    docs = {}
    for i in range(start, start + count):
        text = f"Document number {i} talks about topic {i % 7} in some detail. " * 3
        (folder / f"doc-{i:04d}.txt").write_text(text)
        docs[f"doc-{i:04d}"] = text
    return docs
