"""The command line: `python -m batchline.emulator` serves until SIGTERM, rejects bad options."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import anthropic
import pytest

from batchline.emulator.cli import main
from deployments.local import emulator_process
from tests.support import hello_params


def test_the_cli_serves_until_sigterm(tmp_path: Path) -> None:
    options = ["--db", str(tmp_path / "state.sqlite"), "--processing-seconds", "0.05"]
    options += ["--error-rate", "overloaded_error=1", "--http-error-rate", "429=0"]
    options += ["--retry-after", "0", "--seed", "4"]
    # The first line is `batchline emulator listening on URL`, or this raises.
    with emulator_process(*options) as (server, base_url):
        assert server.stdout is not None
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", base_url), base_url
        batches = anthropic.Anthropic(api_key="k", base_url=base_url).messages.batches
        batch = batches.create(
            requests=[{"custom_id": "only", "params": hello_params(max_tokens=10)}]
        )
        while batches.retrieve(batch.id).processing_status != "ended":
            time.sleep(0.02)
        (result,) = list(batches.results(batch.id))
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=10) == 0
        assert server.stdout.read() == b""

    assert result.result.type == "errored"
    assert result.result.error.error.type == "overloaded_error"
    assert (tmp_path / "state.sqlite").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["--error-rate", "no_such_error=0.5"],
        ["--error-rate", "overloaded_error"],
        ["--http-error-rate", "418=0.5"],
        ["--http-error-rate", "x=0.5"],
        ["--expire-rate", "2"],
        ["--processing-seconds", "-1"],
    ],
)
def test_bad_options_exit_with_usage_error(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(argv)

    assert caught.value.code == 2
    assert "batchline emulator" in capsys.readouterr().err
