"""A step's stamp vouches for its files only while they are exactly as it left them."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from batchline.load import LoadSummary
from batchline.storage import OutputLayout, reuse_or_restamp, stamped_summary, write_stamp

SUMMARY = LoadSummary(fingerprint="f", shards=2, documents=3, invalid=0)


def _stamped(tmp_path: Path) -> OutputLayout:
    layout = OutputLayout(str(tmp_path / "out"))
    layout.write_table("documents", "part-00000.parquet", pa.table({"x": [1, 2]}))
    layout.write_table("documents", "part-00001.parquet", pa.table({"x": [3]}))
    write_stamp(layout, ("documents",), "inputs-a", SUMMARY)
    return layout


def test_a_stamp_returns_its_summary_for_the_same_inputs_and_untouched_files(
    tmp_path: Path,
) -> None:
    layout = _stamped(tmp_path)
    assert stamped_summary(layout, "documents", "inputs-a") == SUMMARY.model_dump()
    assert stamped_summary(layout, "documents", "inputs-b") is None


def test_a_deleted_or_replaced_file_voids_the_stamp(tmp_path: Path) -> None:
    layout = _stamped(tmp_path)
    layout.write_table("documents", "part-00001.parquet", pa.table({"x": [3, 4, 5, 6]}))
    assert stamped_summary(layout, "documents", "inputs-a") is None

    layout = _stamped(tmp_path / "again")
    layout.fs.rm(layout.path("documents", "part-00000.parquet"))
    assert stamped_summary(layout, "documents", "inputs-a") is None


def test_a_step_about_to_rewrite_drops_the_stamp_first(tmp_path: Path) -> None:
    layout = _stamped(tmp_path)
    # Another run's inputs: the step will rewrite the parts. Were it killed halfway, the old
    # stamp must not vouch for half-replaced files that happen to keep their sizes.
    assert reuse_or_restamp(layout, "documents", "inputs-b") is None
    assert stamped_summary(layout, "documents", "inputs-a") is None
    assert reuse_or_restamp(layout, "documents", "inputs-a") is None
