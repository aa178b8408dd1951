"""Ctrl-C during a run started from the CLI: stop at once and leave the flow run Cancelled.

Prefect's engine records a KeyboardInterrupt as a Crashed flow run. Nothing crashed: a person
stopped the run, the batches already created keep processing at the API, and the same command
resumes it (the ledger knows every batch). So the CLI records the run as Cancelled, which also
keeps an interrupted run from looking like a bug in the UI.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from uuid import UUID

from prefect import get_client
from prefect.context import FlowRunContext
from prefect.states import Cancelled

# The shell's status for a process ended by SIGINT.
INTERRUPTED_EXIT = 130


@dataclass
class CtrlC:
    """A SIGINT handler: the first raises KeyboardInterrupt, noting the flow run it stopped;
    a second, while the first is being handled, ends the process at once."""

    flow_run_id: UUID | None = None
    received: int = 0

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.received += 1
        if self.received > 1:
            os._exit(INTERRUPTED_EXIT)
        # Signal handlers run in the interrupted code's context: the innermost flow run's.
        context = FlowRunContext.get()
        if context is not None and context.flow_run is not None:
            self.flow_run_id = context.flow_run.id
        raise KeyboardInterrupt


@contextmanager
def on_ctrl_c(ctrl_c: CtrlC) -> Iterator[None]:
    """Handle SIGINT with ``ctrl_c`` during the block.

    After an interrupt the handler stays, so a second Ctrl-C during the clean-up and Prefect's
    exit also ends the process at once. A SIGINT that was ignored (``nohup``, a background job)
    stays ignored.
    """
    previous = signal.getsignal(signal.SIGINT)
    if previous == signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, ctrl_c)
    try:
        yield
    finally:
        if not ctrl_c.received:
            signal.signal(signal.SIGINT, previous)


def mark_cancelled(flow_run_id: UUID, message: str) -> None:
    """Set an interrupted flow run, and the flow runs it is a subflow of, to Cancelled."""
    with get_client(sync_client=True) as client:
        run_id: UUID | None = flow_run_id
        while run_id is not None:
            client.set_flow_run_state(run_id, Cancelled(message=message), force=True)
            parent_task = client.read_flow_run(run_id).parent_task_run_id
            run_id = client.read_task_run(parent_task).flow_run_id if parent_task else None
