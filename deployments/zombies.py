"""Mark a batchline flow run Crashed when its heartbeats stop: its process died with its machine.

A worker that sees its flow run's process exit marks the run Crashed itself. When the worker dies
too (a machine lost, a container evicted, `stack.py down` mid-run), nothing does, and the run stays
Running for good: the UI says it runs, and a backfill waits on it forever ("still in progress")
instead of starting the day again. Flow runs send a heartbeat event every
PREFECT_FLOWS_HEARTBEAT_FREQUENCY seconds; this automation marks a run Crashed once MISSED_BEATS
of them are missing (https://docs.prefect.io/v3/advanced/detect-zombie-flows).

Prefect's example expects only heartbeats and end states. A batchline run also stops beating
when it suspends while its batches process (hours, by design), so Suspended and Paused count as
an answer too, as do the scheduled states a retrying run passes through; without them every
suspended run would be marked Crashed and its check could never resume it. A crashed run loses
nothing: the next run on its output resumes from the ledger and pays for nothing twice.

    python deployments/zombies.py --heartbeat-seconds 180   # on the server of PREFECT_API_URL

`deployments/stack.py up` installs it with the heartbeat it gives its worker.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import suppress
from datetime import timedelta

from prefect.automations import Automation
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification

from flows.names import FLOWS

NAME = "batchline: crash runs whose heartbeats stopped"
# Prefect's default heartbeat; PREFECT_FLOWS_HEARTBEAT_FREQUENCY must say the same to the runs.
HEARTBEAT_SECONDS = 180
# A busy machine or a slow events connection delays a heartbeat by seconds; three missing in a
# row mean the process is gone.
MISSED_BEATS = 3
# States after which a live run sends no heartbeat: ended, suspended or paused, or waiting to
# retry. "Crashed" is among them, so a run the worker marked Crashed is left alone.
QUIET_STATES = (
    "Completed",
    "Failed",
    "Cancelled",
    "Crashed",
    "Suspended",
    "Paused",
    "Scheduled",
    "AwaitingRetry",
)


def zombie_automation(heartbeat_seconds: int, window: timedelta) -> Automation:
    """The automation: a batchline flow run with no heartbeat or quiet state for ``window``
    after a heartbeat is marked Crashed."""
    return Automation(
        name=NAME,
        description=(
            f"Marks a batchline flow run Crashed when its heartbeats (every {heartbeat_seconds} s)"
            " stop without an end, suspension or pause: its process is gone."
        ),
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", *(f"prefect.flow-run.{s}" for s in QUIET_STATES)},
            match=ResourceSpecification({"prefect.resource.id": "prefect.flow-run.*"}),
            # Only batchline's flows: other flows on the server may rely on other rules.
            match_related=ResourceSpecification(
                {"prefect.resource.role": "flow", "prefect.resource.name": list(FLOWS)}
            ),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=window,
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=(
                    "No heartbeat from this run's process: it died with its worker or machine. "
                    "Run again on the same output to resume; nothing paid for is sent again."
                ),
            )
        ],
    )


def install(heartbeat_seconds: int, window: timedelta) -> Automation:
    """Create the automation on the current API, replacing one of the same name."""
    with suppress(ValueError):  # raised when there is none yet
        old = Automation.read(name=NAME)
        assert isinstance(old, Automation)  # sync call: the automation, not an awaitable
        old.delete()
    new = zombie_automation(heartbeat_seconds, window).create()
    assert isinstance(new, Automation)
    return new


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--heartbeat-seconds",
        type=int,
        default=HEARTBEAT_SECONDS,
        help="PREFECT_FLOWS_HEARTBEAT_FREQUENCY of the workers' flow runs (at least 30)",
    )
    parser.add_argument(
        "--window-seconds",
        type=float,
        help=f"silence after which a run is marked Crashed (default {MISSED_BEATS} heartbeats)",
    )
    args = parser.parse_args(argv)
    window = timedelta(seconds=args.window_seconds or MISSED_BEATS * args.heartbeat_seconds)
    automation = install(args.heartbeat_seconds, window)
    print(f"automation {automation.name!r} ({automation.id}): runs silent for {window} crash")
    return 0


if __name__ == "__main__":
    sys.exit(main())
