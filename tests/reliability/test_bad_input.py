"""Bad input through the CLI: a message naming the document or setting, and nothing spent.

The CLI runs in this process (``batchline.cli.main``, what the ``batchline`` command calls) so
that these cases cost no interpreter start; the flow reports to the suite's Prefect server.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import orjson
import pandas as pd
import pytest

from batchline import schemas
from batchline.cli import main
from batchline.emulator import Emulator
from batchline.emulator.models import DEFAULT_MODELS, EmulatedModel
from tests.support import finish, run_cli, write_documents

pytestmark = pytest.mark.usefixtures("prefect_api")

FAST = ["--poll-interval", "0.2", "--max-poll-interval", "0.5"]


@pytest.fixture
def emulator(
    emulator_factory: Callable[..., Emulator],
    api_env: Callable[[Emulator], None],
    monkeypatch: pytest.MonkeyPatch,
) -> Emulator:
    """An emulator the CLI talks to, and a console wide enough not to wrap messages."""
    started = emulator_factory()
    api_env(started)
    monkeypatch.setenv("COLUMNS", "1000")
    return started


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Exit code and printed text of one `batchline` command, table rules and wrapping removed."""
    code = main(list(argv))
    printed = capsys.readouterr().out
    return code, " ".join(printed.translate({ord("│"): " ", ord("┃"): " "}).split())


def test_bad_documents_become_rows_naming_why_and_are_never_sent(
    tmp_path: Path, emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "empty.txt").write_bytes(b"")
    (docs / "binary.txt").write_bytes(b"PK\x03\x04\x00\x00 zip bytes")
    (docs / "latin1.txt").write_bytes("café crème".encode("latin-1"))
    (docs / "huge.txt").write_text("word " * 180_000)  # ~225k tokens: over a 200k context
    rows = [{"id": "dup", "text": "first"}, {"id": "dup", "text": "second"}, {"text": "no id"}]
    (docs / "rows.jsonl").write_bytes(
        # A blank line: the broken line after it is named by its line number, as an editor shows.
        b"\n".join([*map(orjson.dumps, rows), b"", b"{not json", b'{"id": "num", "text": 5}'])
    )

    code, printed = _cli(capsys, "run", str(docs), "--output", str(tmp_path / "out"), *FAST)

    assert code == 0, printed
    table = pd.read_parquet(tmp_path / "out" / "results")
    keys = table.doc_id + "|" + table.status
    reasons = dict(zip(keys, table.error_message.fillna(""), strict=True))
    assert reasons.pop("rows.jsonl#5|invalid").startswith("line is not valid JSON")
    assert reasons == {
        "empty|invalid": "empty document",
        "binary|invalid": "binary content (NUL byte at offset 4)",
        "latin1|invalid": "not valid UTF-8 (byte 0xe9 at offset 3)",
        "huge|invalid": "about 225000 input tokens + max_tokens 1024 exceed the model's context "
        "of 200000 tokens",
        "dup|succeeded": "",
        "dup|invalid": "duplicate doc_id",
        "rows.jsonl#3|invalid": "no value in id column 'id'",
        "num|invalid": "text column 'text' holds int, not text",
    }
    assert "rows invalid 8" in printed
    # Only the one good document reached the API.
    [sent] = table.custom_id[table.status == "succeeded"]
    assert sent.startswith("dup-")
    assert emulator.stats()["requests_per_custom_id"] == {sent: 1}


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("csv-without-text-column", "docs.csv: no column 'text' (columns: id, body)"),
        ("template-unknown-field", "template '{title}: {text}' fails for every document"),
        ("max-tokens-zero", "batchline: max_tokens: Input should be greater than or equal to 1"),
        (
            "max-tokens-too-large",
            "batchline: max_tokens 200000 is over claude-haiku-4-5's output limit of 64000 tokens",
        ),
        ("unknown-model", "batchline: model 'claude-nope' is unknown to the Models API"),
        ("output-under-a-file", "cannot be used"),
        ("output-not-empty", "is not empty and not a batchline output (it holds notes.txt)"),
        ("no-api-key", "no Anthropic API key: set ANTHROPIC_API_KEY"),
        ("output-inside-source", "docs/out is inside source "),
        ("source-missing", "docs-typo' does not exist"),
    ],
)
def test_unusable_setting_exits_2_naming_it_before_any_spend(
    case: str,
    expected: str,
    tmp_path: Path,
    emulator: Emulator,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = tmp_path / "docs"
    write_documents(source, 3)
    output = tmp_path / "out"
    extra: list[str] = []
    match case:
        case "csv-without-text-column":
            source = tmp_path / "docs.csv"
            source.write_text("id,body\n1,hello\n")
        case "template-unknown-field":
            extra = ["--template", "{title}: {text}"]
        case "max-tokens-zero":
            extra = ["--max-tokens", "0"]
        case "max-tokens-too-large":
            extra = ["--max-tokens", "200000"]
        case "unknown-model":
            extra = ["--model", "claude-nope"]
        case "output-under-a-file":
            (tmp_path / "file.txt").write_text("not a folder")
            output = tmp_path / "file.txt" / "out"
        case "output-not-empty":
            output.mkdir()
            (output / "notes.txt").write_text("someone's notes")
        case "no-api-key":
            monkeypatch.delenv("ANTHROPIC_API_KEY")
        case "output-inside-source":
            output = source / "out"
        case "source-missing":
            source = tmp_path / "docs-typo"

    code, printed = _cli(capsys, "run", str(source), "--output", str(output), *FAST, *extra)

    assert code == 2, printed
    assert expected in printed
    assert emulator.stats()["create_calls"] == 0
    if case in ("no-api-key", "output-inside-source", "source-missing"):
        assert not output.exists(), "nothing may be loaded or claimed"


def test_output_of_another_source_is_refused_unless_forced(
    tmp_path: Path, emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    write_documents(tmp_path / "a", 2)
    write_documents(tmp_path / "b", 3)
    output = str(tmp_path / "out")
    assert _cli(capsys, "run", str(tmp_path / "a"), "--output", output, "--dry-run")[0] == 0

    code, printed = _cli(capsys, "run", str(tmp_path / "b"), "--output", output, "--dry-run")
    assert code == 2
    assert f"holds the run of source {tmp_path / 'a'}, not {tmp_path / 'b'}" in printed
    assert "--force" in printed

    code, printed = _cli(
        capsys, "run", str(tmp_path / "b"), "--output", output, "--dry-run", "--force"
    )
    assert code == 0, printed
    assert "requests (dry run, nothing submitted) 3" in printed
    assert orjson.loads((tmp_path / "out" / "batchline-run.json").read_bytes())["source"] == str(
        tmp_path / "b"
    )
    assert emulator.stats()["create_calls"] == 0


def test_unpriced_model_runs_with_a_warning_and_null_cost(
    tmp_path: Path,
    emulator_factory: Callable[..., Emulator],
    api_env: Callable[[Emulator], None],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Known to the Models API, so usable, but with no price in the table.
    future = EmulatedModel(id="claude-future-9", display_name="Future")
    api_env(emulator_factory(models=(*DEFAULT_MODELS, future)))
    write_documents(tmp_path / "docs", 3)
    with caplog.at_level(logging.WARNING):
        code, printed = _cli(
            capsys,
            "run",
            str(tmp_path / "docs"),
            "--output",
            str(tmp_path / "out"),
            "--model",
            "claude-future-9",
            *FAST,
        )
    assert code == 0, printed
    assert "model 'claude-future-9' has no price in " in caplog.text
    assert "batchline/data/prices.json" in caplog.text
    assert "cost at batch prices unknown (no price)" in printed
    table = pd.read_parquet(tmp_path / "out" / "results")
    assert set(table.status) == {"succeeded"}
    assert table.cost_usd.isna().all()


def test_a_mistyped_source_claims_nothing_so_the_corrected_command_runs(
    tmp_path: Path, emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    write_documents(tmp_path / "docs", 2)
    output = str(tmp_path / "out")
    code, printed = _cli(capsys, "run", str(tmp_path / "dcos"), "--output", output, *FAST)
    assert code == 2
    assert "does not exist" in printed

    code, printed = _cli(capsys, "run", str(tmp_path / "docs"), "--output", output, *FAST)
    assert code == 0, printed
    assert "rows succeeded 2" in printed


def test_unreadable_entries_and_unusual_suffixes_become_rows_and_unread_files_a_warning(
    tmp_path: Path,
    emulator: Emulator,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    docs = tmp_path / "docs"
    write_documents(docs, 2)
    (docs / "LOUD.TXT").write_text("an upper-case suffix")
    (docs / "notes.markdown").write_text("a markdown suffix")
    (docs / "rows.JSONL").write_bytes(orjson.dumps({"id": "row", "text": "a jsonl row"}))
    (docs / "dangling.txt").symlink_to(docs / "deleted.txt")
    (docs / "loop.md").symlink_to(docs / "loop.md")
    (docs / "slides.pdf").write_bytes(b"%PDF-1.4")

    with caplog.at_level(logging.WARNING):
        code, printed = _cli(capsys, "run", str(docs), "--output", str(tmp_path / "out"), *FAST)

    assert code == 0, printed
    table = pd.read_parquet(tmp_path / "out" / "results")
    assert dict(
        zip(table.doc_id, table.status + " " + table.error_message.fillna(""), strict=True)
    ) == {
        "doc-0000": "succeeded ",
        "doc-0001": "succeeded ",
        "LOUD": "succeeded ",
        "notes": "succeeded ",
        "row": "succeeded ",
        "dangling": "invalid unreadable: No such file or directory",
        "loop": "invalid unreadable: Too many levels of symbolic links",
    }
    assert (
        "1 file not read (hidden, or not .txt/.md/.markdown/.jsonl/.csv/.parquet): slides.pdf"
        in caplog.text
    )
    assert len(emulator.stats()["requests_per_custom_id"]) == 5


def test_an_empty_source_writes_an_empty_results_table_with_the_schema(
    tmp_path: Path, emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "docs").mkdir()
    code, printed = _cli(
        capsys, "run", str(tmp_path / "docs"), "--output", str(tmp_path / "out"), *FAST
    )
    assert code == 0, printed
    table = pd.read_parquet(tmp_path / "out" / "results")
    assert table.empty
    assert list(table.columns) == schemas.RESULTS.names
    assert emulator.stats()["create_calls"] == 0
    assert "$0.0000" in printed and "unknown (no price)" not in printed  # nothing was paid


@pytest.mark.parametrize("case", ["refused-in-a-task", "refused-in-the-flow"])
def test_a_refusal_prints_its_line_and_no_traceback(
    case: str, tmp_path: Path, emulator_env: Callable[..., tuple[Emulator, dict[str, str]]]
) -> None:
    """Through the `batchline` process, as a user sees it: Prefect's own console included."""
    _, env = emulator_env()
    source = tmp_path / "docs"
    write_documents(source, 2)
    output = tmp_path / "out"
    if case == "refused-in-a-task":
        source = tmp_path / "docs.csv"
        source.write_text("id,body\n1,hello\n")
        expected = "batchline: docs.csv: no column 'text' (columns: id, body)"
    else:
        output = source / "out"
        expected = f"batchline: output {output} is inside source {source}"

    code, printed = finish(run_cli(source, output, env))

    assert code == 2, printed
    assert expected in printed
    assert "Traceback" not in printed
    assert "Failed" not in printed


def test_a_batch_the_api_finds_too_large_is_refused_in_one_line_and_smaller_batches_finish(
    tmp_path: Path,
    emulator: Emulator,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An endpoint that counts its size limit smaller than batchline cuts its batches.
    monkeypatch.setattr("batchline.emulator.server.MAX_BODY_BYTES", 1000)
    docs = write_documents(tmp_path / "docs", 5)
    argv = ["run", str(tmp_path / "docs"), "--output", str(tmp_path / "out"), *FAST]

    code, printed = _cli(capsys, *argv)

    assert code == 1, printed
    assert "as too large (413): run again with a smaller --batch-size" in printed
    assert "Traceback" not in printed
    assert emulator.stats(per_custom_id=False)["requests_submitted"] == 0

    code, printed = _cli(capsys, *argv, "--batch-size", "1")

    assert code == 0, printed
    table = pd.read_parquet(tmp_path / "out" / "results")
    assert sorted(table.doc_id) == sorted(docs)
    assert set(table.status) == {"succeeded"}
    assert emulator.stats(per_custom_id=False)["requests_submitted"] == len(docs)
