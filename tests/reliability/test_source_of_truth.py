"""What the results hold follows from the current inputs and the ledger, whatever Prefect's cache
says: every case runs the CLI and checks the exact rows and the batches the emulator was paid for.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from batchline.emulator import Emulator
from batchline.pricing import Usage, cost_usd
from tests.support import finish, run_cli, submitted_batches, write_documents


def _run(source: Path, output: Path, env: dict[str, str], *extra: str) -> tuple[pd.DataFrame, str]:
    code, printed = finish(run_cli(source, output, env, *extra))
    assert code == 0, printed
    assert "Traceback" not in printed, printed
    return pd.read_parquet(output / "results").set_index("doc_id").sort_index(), printed


def _answers(table: pd.DataFrame, prefix: str, docs: dict[str, str]) -> None:
    """Every row succeeded and quotes the request now asked: ``prefix`` + its document's text."""
    assert sorted(table.index) == sorted(docs)
    assert set(table.status) == {"succeeded"}
    for doc_id, row in table.iterrows():
        assert row.text.startswith(f"Emulated reply to: {prefix}{docs[str(doc_id)]}"[:80]), row.text


def test_template_and_model_changes_always_answer_the_current_request(
    tmp_path: Path, emulator_env: Callable[..., tuple[Emulator, dict[str, str]]]
) -> None:
    docs = write_documents(tmp_path / "docs", 6)
    emulator, env = emulator_env()
    out = tmp_path / "out"
    a, b = ["--template", "A: {text}"], ["--template", "B: {text}"]

    _answers(_run(tmp_path / "docs", out, env, *a)[0], "A: ", docs)
    _answers(_run(tmp_path / "docs", out, env, *b)[0], "B: ", docs)
    assert emulator.stats()["batches_created"] == 2
    table, _ = _run(tmp_path / "docs", out, env, *a)
    # A's answers are on record for byte-identical requests: served again, nothing paid.
    _answers(table, "A: ", docs)
    assert emulator.stats()["batches_created"] == 2

    opus = _run(tmp_path / "docs", out, env, *a, "--model", "claude-opus-4-5")[0]
    _answers(opus, "A: ", docs)
    assert set(opus.model) == {"claude-opus-4-5"}
    haiku = _run(tmp_path / "docs", out, env, *a, "--model", "claude-haiku-4-5")[0]
    _answers(haiku, "A: ", docs)
    assert set(haiku.model) == {"claude-haiku-4-5"}
    assert emulator.stats()["batches_created"] == 3
    # Each row is costed at its own model's price, not at the model of an earlier run.
    assert haiku.cost_usd.sum() < opus.cost_usd.sum()
    row = haiku.iloc[0]
    usage = Usage(input_tokens=row.input_tokens, output_tokens=row.output_tokens)
    assert row.cost_usd == pytest.approx(cost_usd("claude-haiku-4-5", usage))


def _cached_steps(printed: str) -> set[str]:
    """The steps whose task run came back Cached, from the run's log lines."""
    return set(re.findall(r"Task run '([a-z-]+?)-\w+' - Finished in state Cached", printed))


STEP_OF_AREA = {
    "documents": "load-documents",
    "manifest": "build-requests",
    "results": "write-parquet",
}


@pytest.mark.parametrize("area", list(STEP_OF_AREA))
def test_deleted_state_is_rebuilt_without_paying_again(
    area: str, tmp_path: Path, emulator_env: Callable[..., tuple[Emulator, dict[str, str]]]
) -> None:
    docs = write_documents(tmp_path / "docs", 5)
    emulator, env = emulator_env()
    out = tmp_path / "out"
    first, _ = _run(tmp_path / "docs", out, env)
    _answers(first, "", docs)

    shutil.rmtree(out / area)
    again, printed = _run(tmp_path / "docs", out, env)

    pd.testing.assert_frame_equal(again, first)
    assert emulator.stats()["batches_created"] == 1
    # Only the step whose files went missing ran again; Prefect's cache served the others.
    assert STEP_OF_AREA[area] not in _cached_steps(printed)
    assert {"load-documents", "build-requests"} - {STEP_OF_AREA[area]} <= _cached_steps(printed)
    # And it recorded its result under the same key: the next run finds every step Cached.
    _, printed = _run(tmp_path / "docs", out, env)
    assert set(STEP_OF_AREA.values()) <= _cached_steps(printed)


def test_same_size_edit_with_the_mtime_kept_is_resubmitted(
    tmp_path: Path, emulator_env: Callable[..., tuple[Emulator, dict[str, str]]]
) -> None:
    docs = write_documents(tmp_path / "docs", 5)
    emulator, env = emulator_env()
    out = tmp_path / "out"
    _run(tmp_path / "docs", out, env)

    edited = tmp_path / "docs" / "doc-0002.txt"
    stat = edited.stat()
    docs["doc-0002"] = docs["doc-0002"].replace("Document", "Dokument")  # same length
    edited.write_text(docs["doc-0002"])
    os.utime(edited, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as cp -p or rsync -t leave it
    assert edited.stat().st_size == stat.st_size

    table, _ = _run(tmp_path / "docs", out, env)

    _answers(table, "", docs)
    assert emulator.stats()["batches_created"] == 2
    assert emulator.stats()["requests_per_custom_id"][table.custom_id["doc-0002"]] == 1
    assert sum(emulator.stats()["requests_per_custom_id"].values()) == 6  # 5, then the edit


def test_back_to_back_jobs_with_the_same_file_names_and_lost_creates_keep_their_own_answers(
    tmp_path: Path, emulator_env: Callable[..., tuple[Emulator, dict[str, str]]]
) -> None:
    first_docs = write_documents(tmp_path / "first", 4)
    second_docs = {}
    for doc_id, text in first_docs.items():  # same names, other texts, same request count
        second_docs[doc_id] = text.replace("Document", "Dossier")
        (tmp_path / "second" / f"{doc_id}.txt").parent.mkdir(exist_ok=True)
        (tmp_path / "second" / f"{doc_id}.txt").write_text(second_docs[doc_id])
    # Both creates make their batch and answer 500: each job must find its own batch. The second
    # job's search sees the first job's batch too (same size, just made, not in its ledger).
    emulator, env = emulator_env(lose_creates=2)

    first, _ = _run(tmp_path / "first", tmp_path / "out-1", env)
    second, printed = _run(tmp_path / "second", tmp_path / "out-2", env)

    _answers(first, "", first_docs)
    _answers(second, "", second_docs)
    mine = submitted_batches(tmp_path / "out-2")
    theirs = submitted_batches(tmp_path / "out-1")
    assert not set(mine) & set(theirs)
    # No batch was paid without a job claiming it, and none was paid twice.
    assert emulator.stats()["batches_created"] == len(mine) + len(theirs) == 2
    assert f"adopted batch {theirs[0]} for intent" in printed
    assert f"batch {theirs[0]}, adopted for intent" in printed and "is not ours" in printed
    assert (
        f"adopted batch {mine[0]} for intent" in printed and f"in place of {theirs[0]}" in printed
    )
