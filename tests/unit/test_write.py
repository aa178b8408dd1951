from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchline.config import JobConfig
from batchline.storage import OutputLayout
from batchline.write import (
    WriteError,
    finish_write,
    plan_write,
    write_part,
    write_results,
)
from tests.support import small_run_output

JOB = JobConfig()


def _results(layout: OutputLayout) -> pd.DataFrame:
    return pd.read_parquet(layout.url("results")).sort_values("doc_id").reset_index(drop=True)


def _hidden(layout: OutputLayout) -> list[str]:
    return [n for n in os.listdir(layout.path("results")) if n.startswith(".answers-")]


def test_parts_are_written_from_the_output_root_alone_in_any_order(tmp_path: Path) -> None:
    whole = small_run_output(tmp_path / "whole")
    split = OutputLayout(str(tmp_path / "split" / "out"))
    shutil.copytree(whole.root, split.root)
    expected = write_results(whole)

    plan = plan_write(split)
    assert [p.name for p in plan.parts] == [
        "batch-msgbatch_1.parquet",
        "batch-msgbatch_2.parquet",
        *(f"invalid-{n}" for n in split.names("invalid", ".parquet")),
    ]
    # A worker has no ledger and no request index: the plan handed each part what it needs.
    ledger = Path(split.path("ledger"))
    ledger.rename(tmp_path / "ledger-elsewhere")
    parts = [write_part(split, part) for part in reversed(plan.parts)]
    (tmp_path / "ledger-elsewhere").rename(ledger)
    summary = finish_write(split, plan, parts)

    assert summary.model_dump(exclude={"output"}) == expected.model_dump(exclude={"output"})
    assert summary.by_status == {"succeeded": 5, "invalid": 1} and summary.batches == 2
    table = _results(split)
    pd.testing.assert_frame_equal(table, _results(whole))
    assert list(table.doc_id) == [f"d{i}" for i in range(6)]
    assert list(table.attempts) == [2, 2, 1, 1, 1, 0]
    assert list(table.batch_id[:3]) == ["msgbatch_2", "msgbatch_2", "msgbatch_1"]
    assert table.error_message[5].startswith("max_tokens column")
    assert _hidden(split) == []


def test_a_written_table_is_planned_as_done_until_a_part_goes(tmp_path: Path) -> None:
    layout = small_run_output(tmp_path / "run")
    first = write_results(layout)

    again = plan_write(layout)
    assert again.parts == [] and again.written == first and again.batches == 2
    assert finish_write(layout, again, []) == first

    # A killed write's leftovers, and a part no longer owed: the next write removes them.
    results = Path(layout.path("results"))
    (results / "batch-msgbatch_1.parquet").unlink()
    shutil.copy(results / "batch-msgbatch_2.parquet", results / "batch-msgbatch_0.parquet")
    (results / ".answers-msgbatch_0.parquet").write_bytes(b"left by a killed write")
    plan = plan_write(layout)
    assert plan.written is None and len(plan.parts) == 2 + len(layout.names("invalid"))
    assert finish_write(layout, plan, [write_part(layout, p) for p in plan.parts]) == first
    assert sorted(layout.names("results")) == [
        "batch-msgbatch_1.parquet",
        "batch-msgbatch_2.parquet",
        "invalid-part-00000-00002.parquet",
    ]
    assert _hidden(layout) == []
    assert plan_write(layout).written == first


def test_the_plan_refuses_while_a_request_is_unanswered_and_writes_nothing(
    tmp_path: Path,
) -> None:
    layout = small_run_output(tmp_path / "run", collect_retry=False)

    with pytest.raises(WriteError, match="2 documents have no collected result yet"):
        plan_write(layout)
    assert not layout.fs.exists(layout.path("results"))


def test_no_documents_still_leave_a_table_with_the_typed_columns(tmp_path: Path) -> None:
    layout = OutputLayout(str(tmp_path / "out"))
    schema = {"type": "object", "properties": {"score": {"type": "integer"}}}

    summary = write_results(layout, schema)

    assert summary.rows == 0 and summary.batches == 0
    written = pq.read_schema(layout.path("results", "empty.parquet"))
    assert written.names[-1] == "score" and written.field("score").type == pa.int64()
