from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pandas as pd
import pytest

from batchline.config import ConfigError, SourceOptions
from batchline.load import (
    check_source_and_output,
    iter_shards,
    read_staged,
    source_fingerprint,
    stage_documents,
)
from batchline.storage import OutputLayout, part_name


def _docs(source: Path, **options: int) -> dict[str, tuple[str | None, str | None]]:
    shards = list(iter_shards(str(source), SourceOptions(**options)))
    return {d.doc_id: (d.text, d.invalid_reason) for shard in shards for d in shard}


def test_folder_of_text_files_with_bad_documents_becomes_invalid_rows(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("alpha")
    (tmp_path / "sub" / "b.md").write_text("beta")
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "binary.txt").write_bytes(b"ab\x00cd")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "big.txt").write_text("x" * 101)
    (tmp_path / "ignored.bin").write_bytes(b"\x00")
    docs = _docs(tmp_path, max_document_bytes=100)
    assert docs["a"] == ("alpha", None)
    assert docs["sub/b"] == ("beta", None)
    assert docs["empty"] == (None, "empty document")
    assert docs["binary"] == (None, "binary content (NUL byte at offset 2)")
    assert docs["latin1"] == (None, "not valid UTF-8 (byte 0xe9 at offset 3)")
    assert docs["big"] == (None, "over the size limit of 100 bytes")
    assert "ignored" not in docs


def test_jsonl_rows_bad_lines_and_duplicate_ids(tmp_path: Path) -> None:
    source = tmp_path / "docs.jsonl"
    source.write_text(
        '{"id": "1", "text": "one", "lang": "en"}\n'
        "not json\n"
        '{"id": "1", "text": "again"}\n'
        '{"text": "no id"}\n'
        '{"id": 2, "text": 5}\n'
    )
    shards = list(iter_shards(str(source), SourceOptions(shard_size=2)))
    assert [len(s) for s in shards] == [2, 2, 1]
    docs = {d.doc_id: d for s in shards for d in s if d.doc_id != "1" or d.text}
    assert docs["1"].fields == {"id": "1", "lang": "en"}
    reasons = [d.invalid_reason for s in shards for d in s]
    assert reasons[1] is not None and reasons[1].startswith("line is not valid JSON")
    assert reasons[2] == "duplicate doc_id"
    assert reasons[3] == "no value in id column 'id'"
    assert reasons[4] == "text column 'text' holds int, not text"


def test_csv_and_parquet_with_configurable_columns(tmp_path: Path) -> None:
    frame = pd.DataFrame({"key": ["a", "b"], "body": ["first", "second"], "n": ["1", "2"]})
    frame.to_csv(tmp_path / "docs.csv", index=False)
    frame.to_parquet(tmp_path / "docs.parquet")
    for name in ("docs.csv", "docs.parquet"):
        shards = list(
            iter_shards(str(tmp_path / name), SourceOptions(id_column="key", text_column="body"))
        )
        assert [(d.doc_id, d.text, d.fields["n"]) for d in shards[0]] == [
            ("a", "first", "1"),
            ("b", "second", "2"),
        ]


def test_csv_without_the_text_column_is_a_clear_config_error(tmp_path: Path) -> None:
    (tmp_path / "docs.csv").write_text("id,body\n1,hello\n")
    message = "docs.csv: no column 'text' (columns: id, body)"
    with pytest.raises(ConfigError, match=re.escape(message)):
        list(iter_shards(str(tmp_path / "docs.csv"), SourceOptions()))


def test_missing_source_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        list(iter_shards(str(tmp_path / "nope"), SourceOptions()))


def test_fingerprint_changes_with_content_and_options(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("alpha")
    before = source_fingerprint(str(tmp_path), SourceOptions())
    assert before == source_fingerprint(str(tmp_path), SourceOptions())
    assert before != source_fingerprint(str(tmp_path), SourceOptions(shard_size=5))
    (tmp_path / "b.txt").write_text("beta")
    assert before != source_fingerprint(str(tmp_path), SourceOptions())


def test_suffixes_match_in_any_case_and_unread_files_are_named_in_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "upper.TXT").write_text("upper")
    (tmp_path / "notes.markdown").write_text("markdown")
    (tmp_path / "rows.JSONL").write_text('{"id": "row", "text": "from jsonl"}\n')
    for name in ("a.rst", "b.doc", ".hidden.txt", "c.pdf", "d.html", "e.xml"):
        (tmp_path / name).write_text("not read")
    with caplog.at_level(logging.WARNING, logger="batchline.load"):
        docs = _docs(tmp_path)
    assert docs == {
        "upper": ("upper", None),
        "notes": ("markdown", None),
        "row": ("from jsonl", None),
    }
    [warning] = [r.getMessage() for r in caplog.records]
    assert warning == (
        "6 files not read (hidden, or not .txt/.md/.markdown/.jsonl/.csv/.parquet): "
        ".hidden.txt, a.rst, b.doc, c.pdf, d.html, ..."
    )


def test_unreadable_entries_become_invalid_documents_and_the_rest_is_read(
    tmp_path: Path,
) -> None:
    # The tests run as root, which reads a file whatever its mode; these entries fail for root
    # too: on stat (dangling, looping), on open (a directory), on read (/proc/self/mem at 0).
    (tmp_path / "good.txt").write_text("good")
    (tmp_path / "dangling.txt").symlink_to(tmp_path / "missing.txt")
    (tmp_path / "loop.txt").symlink_to(tmp_path / "loop.txt")
    (tmp_path / "folder.md").symlink_to(tmp_path, target_is_directory=True)
    (tmp_path / "memory.txt").symlink_to("/proc/self/mem")
    (tmp_path / "gone.jsonl").symlink_to(tmp_path / "missing.jsonl")
    os.mkfifo(tmp_path / "pipe.txt")  # opening it would block: it must not be opened
    assert _docs(tmp_path) == {
        "good": ("good", None),
        "dangling": (None, "unreadable: No such file or directory"),
        "loop": (None, "unreadable: Too many levels of symbolic links"),
        "folder": (None, "unreadable: a directory"),
        "memory": (None, "unreadable: Invalid argument"),
        "gone.jsonl": (None, "unreadable: No such file or directory"),
        "pipe": (None, "unreadable: not a regular file"),
    }
    # The load step's cache key reads the same entries: an unreadable one is its reason there,
    # not an error that fails the run before any row is written.
    before = source_fingerprint(str(tmp_path), SourceOptions())
    (tmp_path / "missing.txt").write_text("now there")
    assert source_fingerprint(str(tmp_path), SourceOptions()) != before


def test_output_inside_the_source_and_a_missing_source_are_refused(tmp_path: Path) -> None:
    source = tmp_path / "docs"
    source.mkdir()
    check_source_and_output(str(source), str(tmp_path / "out"))
    for output in (source, source / "out", source / "deep" / "out"):
        with pytest.raises(ConfigError, match=f"output {output} is inside source {source}"):
            check_source_and_output(str(source), str(output))
    # Through a symlink too: the paths are compared resolved.
    (tmp_path / "alias").symlink_to(source, target_is_directory=True)
    with pytest.raises(ConfigError, match="is inside source"):
        check_source_and_output(str(source), str(tmp_path / "alias" / "out"))
    with pytest.raises(ConfigError, match="does not exist"):
        check_source_and_output(str(tmp_path / "typo"), str(tmp_path / "out"))


def test_staging_marks_ids_repeated_across_shards_and_drops_parts_of_a_larger_run(
    tmp_path: Path,
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.jsonl").write_text('{"id": "1", "text": "one"}\n{"id": "2", "text": "two"}\n')
    (source / "b.jsonl").write_text('{"id": "1", "text": "again"}\n{"id": "3", "text": "three"}\n')
    layout = OutputLayout(str(tmp_path / "out"))
    # One file per load shard, one row per part: the repeat of "1" is in another shard.
    summary = stage_documents(str(source), layout, SourceOptions(shard_size=1))

    parts = layout.names("documents", ".parquet")
    assert parts == [part_name(s, p) for s in (0, 1) for p in (0, 1)]
    rows = [r for name in parts for r in read_staged(layout, name)]
    assert [(d.doc_id, d.text, d.invalid_reason) for d in rows] == [
        ("1", "one", None),
        ("2", "two", None),
        ("1", None, "duplicate doc_id"),
        ("3", "three", None),
    ]
    assert (summary.shards, summary.documents, summary.invalid) == (4, 4, 1)

    (source / "b.jsonl").unlink()
    again = stage_documents(str(source), layout, SourceOptions(shard_size=1))
    assert layout.names("documents", ".parquet") == [part_name(0, 0), part_name(0, 1)]
    assert (again.shards, again.documents, again.invalid) == (2, 2, 0)
