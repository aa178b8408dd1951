from __future__ import annotations

import re

from batchline.report import artifact_key, openable_url, results_link, summary_markdown
from batchline.write import RunSummary


def _summary(output: str, **changes: object) -> RunSummary:
    fields: dict[str, object] = {
        "output": output,
        "rows": 6,
        "by_status": {"succeeded": 3, "errored": 2, "invalid": 1},
        "tokens": {"input_tokens": 1200, "output_tokens": 340},
        "cost_usd": 0.0125,
        "standard_cost_usd": 0.025,
        "batches": 2,
        "unpriced_models": [],
        "error_types": {"overloaded_error": 1, "invalid_request_error": 1},
    }
    return RunSummary.model_validate(fields | changes)


def test_each_output_has_its_own_valid_artifact_key() -> None:
    day1 = artifact_key("batchline-summary", "s3://bucket/daily/date=2024-03-01")
    day2 = artifact_key("batchline-summary", "s3://bucket/daily/date=2024-03-02")
    assert day1 != day2
    assert day1 == artifact_key("batchline-summary", "s3://bucket/daily/date=2024-03-01")
    assert re.fullmatch(r"batchline-summary-[0-9a-f]{12}", day1)


def test_local_results_get_a_file_url_and_s3_ones_stay_as_they_are() -> None:
    assert openable_url("/data/out/results") == "file:///data/out/results"
    assert openable_url("s3://bucket/out/results") == "s3://bucket/out/results"
    assert "no browser opens it" in results_link("s3://bucket/out/results")[1]
    assert results_link("/data/out/results") == ("file:///data/out/results", "results (Parquet)")


def test_markdown_has_statuses_tokens_costs_batches_a_link_and_advice() -> None:
    text = summary_markdown(_summary("/data/out/results"), max_attempts=3)

    assert "## 6 rows from 2 batches" in text
    assert "| succeeded | 3 |" in text and "| errored | 2 |" in text
    assert "| input | 1,200 |" in text and "| output | 340 |" in text
    assert "$0.0125 at batch prices ($0.0250 at standard prices" in text
    assert "[file:///data/out/results](file:///data/out/results)" in text
    advice = [line for line in text.splitlines() if line.startswith("- ")]
    invalid_request, overloaded, invalid = advice
    assert "`invalid_request_error`" in invalid_request
    assert "until the request changes" in invalid_request
    assert "`overloaded_error`" in overloaded and "submitted 3 times" in overloaded
    assert invalid.startswith("- 1 document could not become a request")


def test_s3_results_are_named_as_text_with_why_there_is_no_link() -> None:
    summary = _summary(
        "s3://bucket/out/results",
        by_status={"succeeded": 6},
        error_types={},
        cost_usd=None,
        standard_cost_usd=None,
        unpriced_models=["claude-new-9"],
    )
    text = summary_markdown(summary, max_attempts=3)

    assert "`s3://bucket/out/results`" in text and "](" not in text
    assert "opens in no browser" in text
    assert "unknown: no price for `claude-new-9`" in text
    assert "did not succeed" not in text
