"""Local processes for tests, benchmarks and the local stack: the emulator, throwaway servers.

Not part of the installed package: only tests/, bench/ and deployments/stack.py start these. The
primitives (a free port, a Prefect server in its own process group, stopping it) are the
product's own, for `batchline server start` and a run's private server, in
batchline/processes.py; they are importable from here too, so that a script needs one module.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

from batchline.processes import (
    await_prefect_server,
    await_ready,
    free_port,
    healthy,
    prefect_env,
    spawn,
    spawn_prefect_server,
    stop,
    stop_groups,
    wait_for,
)

__all__ = [
    "await_prefect_server",
    "emulator_process",
    "free_port",
    "healthy",
    "prefect_env",
    "prefect_server",
    "spawn",
    "spawn_prefect_server",
    "start_emulator",
    "start_prefect_server",
    "stop",
    "stop_groups",
    "wait_for",
]

_LISTENING = re.compile(r"^batchline emulator listening on (http://\S+)$", re.M)


def start_prefect_server(
    home: Path,
    port: int | None = None,
    *,
    ui: bool = True,
    services: bool = True,
    log: Path | None = None,
    settings: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 180,
) -> tuple[subprocess.Popen[bytes], str]:
    """Start `prefect server start` (state under ``home``) and wait until its API is healthy.

    Returns the process and its API URL. ``port`` None takes a free one.
    """
    port = free_port() if port is None else port
    process = spawn_prefect_server(
        home, port, ui=ui, services=services, log=log, settings=settings, cwd=cwd
    )
    return process, await_prefect_server(process, port, timeout, log)


@contextlib.contextmanager
def prefect_server(
    home: Path,
    *,
    ui: bool = True,
    services: bool = True,
    log: Path | None = None,
    timeout: float = 180,
) -> Iterator[str]:
    """A Prefect server on a free port for the ``with`` block; yields its API URL."""
    process, api_url = start_prefect_server(
        home, ui=ui, services=services, log=log, timeout=timeout
    )
    try:
        yield api_url
    finally:
        stop(process, grace=30)


def start_emulator(
    *options: str, port: int = 0, log: Path | None = None, timeout: float = 60
) -> tuple[subprocess.Popen[bytes], str]:
    """Start the emulator CLI (`python -m batchline.emulator`) with ``options``.

    Returns the process and the base URL it announces. With ``log`` its output is appended
    there; without, its stdout is a pipe the caller may read on.
    """
    command = [sys.executable, "-m", "batchline.emulator", "--port", str(port), *options]
    if log is None:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, start_new_session=True)
        assert process.stdout is not None
        announced = _LISTENING.search(process.stdout.readline().decode())
    else:
        start = log.stat().st_size if log.exists() else 0

        def announcement() -> re.Match[str] | None:
            with log.open("rb") as out:
                out.seek(start)
                return _LISTENING.search(out.read().decode(errors="replace"))

        process = spawn(command, dict(os.environ), log)
        await_ready(process, announcement, timeout, "the emulator", log)
        announced = announcement()
    if announced is None:
        stop(process)
        raise RuntimeError(f"the emulator did not announce its URL (exit code {process.poll()})")
    return process, announced[1]


@contextlib.contextmanager
def emulator_process(*options: str, port: int = 0) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """The emulator CLI for the ``with`` block; yields the process and its base URL."""
    process, base_url = start_emulator(*options, port=port)
    try:
        yield process, base_url
    finally:
        stop(process)
        assert process.stdout is not None
        process.stdout.close()
