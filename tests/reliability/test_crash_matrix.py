"""The pipeline SIGKILLed at every failpoint, then rerun: nothing lost, nothing paid twice."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from batchline.emulator import Emulator
from batchline.failpoints import ENV_VAR
from tests.support import assert_complete_and_paid_once, finish, run_cli

# Every point named in batchline/failpoints.py, in pipeline order.
FAILPOINTS = [
    "load.done",
    "build.done",
    "submit.intent",
    "submit.created",
    "submit.done",
    "wait.polled",
    "collect.written",
    "collect.done",
    "write.done",
]


def test_every_failpoint_is_listed_in_the_module_docstring() -> None:
    import batchline.failpoints

    documented = batchline.failpoints.__doc__ or ""
    assert all(f"``{name}``" in documented for name in FAILPOINTS)


@pytest.mark.parametrize("point", FAILPOINTS)
def test_killed_at_failpoint_then_rerun_loses_nothing_and_pays_once(
    point: str,
    corpus: tuple[Path, set[str]],
    tmp_path: Path,
    emulator_env: Callable[..., tuple[Emulator, dict[str, str]]],
) -> None:
    source, doc_ids = corpus
    emulator, env = emulator_env(seed=7)
    output = tmp_path / "out"

    code, printed = finish(run_cli(source, output, {**env, ENV_VAR: point}))
    assert code == -signal.SIGKILL, f"failpoint {point} never fired:\n{printed}"
    # Whatever the crash left behind is whole: no half-written Parquet under a real name.
    for part in output.rglob("*.parquet"):
        if not part.name.startswith("."):
            pq.read_metadata(part)

    code, printed = finish(run_cli(source, output, env))
    assert code == 0, printed

    table = pd.read_parquet(output / "results")
    assert_complete_and_paid_once(table, emulator, doc_ids)
    assert set(table.status) == {"succeeded"}
    assert emulator.stats()["batches_created"] == 1
