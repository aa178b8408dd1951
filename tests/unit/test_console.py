from __future__ import annotations

import logging
import sys

from batchline.config import RunError
from batchline.console import QuietRefusals


def _record(message: str, error: BaseException | None = None) -> logging.LogRecord:
    exc_info = None
    if error is not None:
        try:
            raise error
        except BaseException:
            exc_info = sys.exc_info()
    return logging.LogRecord("prefect.flow_runs", logging.ERROR, "", 0, message, (), exc_info)


def test_a_refusal_and_its_failed_state_are_dropped_and_other_failures_kept() -> None:
    quiet = QuietRefusals()
    assert quiet.filter(_record("Finished in state Failed('... exception: RunError: x')"))
    assert not quiet.filter(_record("Encountered exception during execution", RunError("x")))
    assert not quiet.filter(_record("Finished in state Failed('... exception: RunError: x')"))
    assert quiet.filter(_record("Encountered exception during execution", KeyError("bug")))
    assert quiet.filter(_record("Finished in state Failed('... exception: KeyError: bug')"))
    assert quiet.filter(_record("Finished in state Completed()"))


def test_the_crash_records_of_a_ctrl_c_are_dropped() -> None:
    quiet = QuietRefusals()
    assert not quiet.filter(
        _record("Crash detected! Execution was aborted by an interrupt signal.")
    )
    assert not quiet.filter(
        _record("Finished in state Crashed('Execution was aborted by an interrupt signal.')")
    )
