"""An API outage of minutes, beyond the SDK's own retries, during wait and during collect."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from batchline.emulator import Emulator
from deployments.local import wait_for
from tests.support import (
    assert_complete_and_paid_once,
    finish,
    run_cli,
    submitted_batches,
    write_documents,
)

OUTAGE_SECONDS = 120.0


@pytest.mark.slow
def test_a_two_minute_outage_during_wait_and_another_during_collect_are_ridden_out(
    tmp_path: Path, emulator_env: Callable[..., tuple[Emulator, dict[str, str]]]
) -> None:
    # The batch ends while the API is down; on restart the first results download starts the
    # second outage (the fault counts from each start), so it lands inside collect.
    emulator, env = emulator_env(processing_seconds=5, results_outage_seconds=OUTAGE_SECONDS)
    docs = write_documents(tmp_path / "docs", 5)
    output = tmp_path / "out"
    process = run_cli(tmp_path / "docs", output, env)
    wait_for(lambda: submitted_batches(output), 120, "the batch", process)

    emulator.stop()  # connections refused, as when the API is unreachable
    time.sleep(OUTAGE_SECONDS)
    emulator.start()
    code, printed = finish(process, timeout=2 * OUTAGE_SECONDS + 180)

    assert code == 0, printed
    assert emulator.stats(per_custom_id=False)["batches_created"] == 1
    assert_complete_and_paid_once(pd.read_parquet(output / "results"), emulator, set(docs))
    # Both steps outlasted the SDK's retries and were retried as Prefect tasks.
    retried = {
        line.split("'")[1].split("-")[0] for line in printed.splitlines() if "Retry 1/" in line
    }
    assert retried == {"wait", "collect"}, printed
