"""Two `batchline run` on one output at once: the output lock lets one through."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from batchline.emulator import Emulator
from batchline.lock import LOCK_NAME
from tests.support import assert_complete_and_paid_once, finish, run_cli


def test_two_runs_on_one_output_one_runs_and_the_other_refuses_naming_it(
    corpus: tuple[Path, set[str]],
    tmp_path: Path,
    emulator_env: Callable[..., tuple[Emulator, dict[str, str]]],
) -> None:
    source, doc_ids = corpus
    # The batch processes for longer than the loser waits (10 s), so the loser refuses; that a
    # waiting run gets the lock when the holder ends is tests/unit/test_lock.py's.
    emulator, env = emulator_env(processing_seconds=20)
    output = tmp_path / "out"

    runs = [run_cli(source, output, env) for _ in range(2)]
    results = [finish(run) for run in runs]

    assert sorted(code for code, _ in results) == [0, 2], results
    winner = runs[[code for code, _ in results].index(0)]
    loser_printed = next(printed for code, printed in results if code == 2)
    holder = rf"flow run \S+ \([0-9a-f-]+\) \(pid {winner.pid} on \S+, since [0-9-]+ [0-9:]+ UTC\)"
    assert re.search(
        rf"output {re.escape(str(output))} is in use by {holder}: waiting up to 10 s", loser_printed
    )
    refusals = re.findall(r"^batchline: .*$", loser_printed, re.M)
    assert len(refusals) == 1, loser_printed
    assert re.fullmatch(
        rf"batchline: output {re.escape(str(output))} is in use by {holder}; "
        "wait for that run to end, or choose another output",
        refusals[0],
    ), refusals
    stats = emulator.stats()
    assert stats["create_calls"] == 1, "no batch paid twice"
    assert_complete_and_paid_once(pd.read_parquet(output / "results"), emulator, doc_ids)
    assert not (output / LOCK_NAME).exists()

    # The output stays usable: a third run finds everything done and pays for nothing.
    code, printed = finish(run_cli(source, output, env))
    assert code == 0, printed
    assert emulator.stats()["create_calls"] == 1
