"""Shared fixtures: one Prefect test server per session, emulators on real loopback sockets.

Every process the tests start inherits ``SESSION_TAG`` in its environment; the session fails if
any of them is still running when it ends (an orphaned Prefect server, say), and ends them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from batchline.emulator import Emulator, EmulatorConfig

TEST_API_KEY = "sk-ant-test-0123456789-not-a-real-key"
# Not BATCHLINE_ or PREFECT_: tests/support.py:cli_env and deployments/local.py drop those.
SESSION_TAG = "PYTEST_BATCHLINE_SESSION"
# Time for processes that are already stopping (a server whose CLI was killed) to exit.
ORPHAN_GRACE_SECONDS = 30


def pytest_configure(config: pytest.Config) -> None:
    os.environ[SESSION_TAG] = f"{os.getpid()}-{uuid.uuid4().hex}"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the session when a process it started outlives it; end those processes."""
    deadline = time.monotonic() + ORPHAN_GRACE_SECONDS
    while (survivors := tagged_processes()) and time.monotonic() < deadline:
        time.sleep(0.5)
    if not survivors:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.ensure_newline()
        reporter.write_sep("=", "processes started by the tests outlived them (now killed)")
    for pid, command in survivors.items():
        if reporter is not None:
            reporter.write_line(f"{pid}: {command}")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def tagged_processes() -> dict[int, str]:
    """Live processes (not this one) carrying this session's tag: pid → command line."""
    needle = f"{SESSION_TAG}={os.environ[SESSION_TAG]}".encode()
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if needle not in (proc / "environ").read_bytes().split(b"\0"):
                continue
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile, or a zombie
            continue
        if command and not _ends_with_this_process(proc, command):
            found[int(proc.name)] = command.strip()
    return found


def _ends_with_this_process(proc: Path, command: str) -> bool:
    """Whether ``proc`` is this process's own multiprocessing resource tracker.

    The Dask test's local cluster makes this process start one; it exits when this process
    closes its pipe, so it cannot outlive the session, though it is still alive at its end.
    """
    try:
        parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return False
    return parent == os.getpid() and "multiprocessing.resource_tracker" in command


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """A temporary Prefect server (SQLite) for every flow test of the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def emulator_defaults() -> dict[str, Any]:
    """Settings of every `emulator_factory` emulator that its test does not name."""
    return {"processing_seconds": 0.2}


@pytest.fixture
def emulator_factory(emulator_defaults: dict[str, Any]) -> Iterator[Callable[..., Emulator]]:
    """`emulator_factory(**settings)` starts an emulator; all are stopped after the test."""
    started: list[Emulator] = []

    def start(**settings: Any) -> Emulator:
        emulator = Emulator(EmulatorConfig(**(emulator_defaults | settings)))
        emulator.start()
        started.append(emulator)
        return emulator

    yield start
    for emulator in started:
        emulator.stop()


@pytest.fixture
def api_env(monkeypatch: pytest.MonkeyPatch) -> Callable[[Emulator], None]:
    """Point the SDK at an emulator through the environment, as a user would."""

    def point(emulator: Emulator) -> None:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", emulator.base_url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", TEST_API_KEY)

    return point


@pytest.fixture(autouse=True)
def _no_real_api(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may reach the real API, whatever the developer's shell exports."""
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9")  # a closed port
