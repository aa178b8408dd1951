"""What the CLI's console shows of Prefect's logs when a run is refused, stops or is interrupted.

A refusal (ConfigError, a setting pydantic rejects) or a stop (RunError) is an answer for the user,
not a bug: the CLI prints it as one line saying what to change. Prefect's engine logs the same
exception first, as a traceback from the task and another from the flow, then as Failed states;
it logs a Ctrl-C as a crash of each running task and flow, and the CLI then says what is in flight
and records the run Cancelled. Those records leave the console only; the API log handler still
sends them to the server, so deployed runs and the UI keep the full story.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from pydantic import ValidationError

from batchline.config import ConfigError, RunError

REFUSALS = (ConfigError, RunError, ValidationError)
# How Prefect's crash records and Crashed states describe a KeyboardInterrupt.
INTERRUPT = "aborted by an interrupt signal"
# The loggers whose handlers write to the console: the root's (Prefect's console handler) and
# those the CLI's live status line adds to the run loggers.
_CONSOLE_LOGGERS = ("", "prefect.flow_runs", "prefect.task_runs")


class QuietRefusals(logging.Filter):
    """Drops the records of a refusal (those carrying it, then the Failed states that name it)
    and the crash records of a Ctrl-C."""

    def __init__(self) -> None:
        super().__init__()
        self._refused: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, REFUSALS):
            self._refused.add(f"{type(error).__name__}: ")
            return False
        # "Finished in state Failed('... exception: ConfigError: <message>')" has no exc_info.
        message = record.getMessage()
        if INTERRUPT in message:
            return False
        return not (
            message.startswith("Finished in state Failed")
            and any(name in message for name in self._refused)
        )


def one_line(refusal: BaseException) -> str:
    """A refusal as the one line the CLI prints: pydantic's own message spans several."""
    if isinstance(refusal, ValidationError):
        return "; ".join(
            f"{'.'.join(map(str, error['loc']))}: {error['msg']}" for error in refusal.errors()
        )
    return str(refusal)


@contextmanager
def quiet_refusals() -> Iterator[None]:
    """While the block runs, the console shows no traceback or Failed state of a refusal."""
    from prefect.logging.handlers import APILogHandler

    quiet = QuietRefusals()
    handlers = {
        handler
        for name in _CONSOLE_LOGGERS
        for handler in logging.getLogger(name).handlers
        if not isinstance(handler, APILogHandler)
    }
    for handler in handlers:
        handler.addFilter(quiet)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(quiet)
