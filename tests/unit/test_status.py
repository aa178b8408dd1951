"""output_status, from an output's files alone: what was paid for and answered, and whether the
results table still answers it."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from batchline.collect import write_collected
from batchline.config import ConfigError
from batchline.status import output_status
from batchline.storage import OutputLayout, claim_output
from batchline.write import write_results
from tests.support import (
    SMALL_RUN_JOB,
    collect_answers,
    record_batch,
    result_line,
    small_run_output,
)


def _claimed(tmp_path: Path, *, collect_retry: bool = True) -> OutputLayout:
    root = tmp_path / "run"
    layout = small_run_output(root, collect_retry=collect_retry)
    claim_output(layout, str(root / "docs.jsonl"), SMALL_RUN_JOB.request_fingerprint())
    return layout


def _manifest(layout: OutputLayout) -> pa.Table:
    parts = [layout.read_table("manifest", n) for n in layout.names("manifest", ".parquet")]
    return pa.concat_tables(parts)


def test_every_answer_is_counted_and_priced_as_the_results_price_it(tmp_path: Path) -> None:
    layout = _claimed(tmp_path)
    summary = write_results(layout)

    state = output_status(layout)

    assert state.loaded is not None and (state.loaded.documents, state.loaded.invalid) == (6, 0)
    assert state.built is not None and (state.built.requests, state.built.invalid) == (5, 1)
    assert (state.batches_created, state.requests_submitted, state.creates_in_doubt) == (2, 7, 0)
    assert state.processing == []
    # The two overloaded first attempts are answers too, though the results keep their retries.
    assert state.answers == {"succeeded": 5, "errored": 2}
    assert state.spent_usd == pytest.approx(summary.cost_usd) and state.spent_usd > 0
    assert state.results == summary


def test_results_are_reported_only_while_they_answer_every_collected_answer(
    tmp_path: Path,
) -> None:
    layout = _claimed(tmp_path, collect_retry=False)

    waiting = output_status(layout)
    assert [(p.batch_id, p.request_count) for p in waiting.processing] == [("msgbatch_2", 2)]
    assert waiting.answers == {"succeeded": 3, "errored": 2} and waiting.results is None

    retried = _manifest(layout).column("custom_id").to_pylist()[:2]
    collect_answers(layout, "msgbatch_2", dict.fromkeys(retried, "succeeded"))
    summary = write_results(layout)
    assert output_status(layout).results == summary

    # A later round's answer that the table does not hold yet.
    record_batch(layout, _manifest(layout).slice(0, 1), "msgbatch_3")
    collect_answers(layout, "msgbatch_3", {retried[0]: "succeeded"})
    assert output_status(layout).results is None


def test_an_answer_from_an_unpriced_model_makes_the_spend_unknown(tmp_path: Path) -> None:
    layout = _claimed(tmp_path, collect_retry=False)
    retried = _manifest(layout).column("custom_id").to_pylist()[:2]
    lines = [result_line(c, "succeeded", "hi", model="claude-new-9") for c in retried]
    write_collected(layout, "msgbatch_2", lines, set(retried))

    state = output_status(layout)

    assert state.spent_usd is None and state.unpriced_models == ["claude-new-9"]


def test_a_folder_without_a_run_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"{tmp_path} holds no batchline run"):
        output_status(OutputLayout(str(tmp_path)))
