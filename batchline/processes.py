"""The processes batchline starts: Prefect servers, for a CLI run or `batchline server start`.

Each runs in its own process group (``start_new_session``) so that ``stop`` ends it together
with whatever it started, and a Ctrl-C at the terminal does not reach it. Prefect servers run as
``python -m batchline.prefect_server server start``: this module imports nothing of Prefect.
Starting processes for tests, benchmarks and the local stack (the emulator, throwaway servers)
is deployments/local.py's.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def prefect_env(home: Path, inherit: bool = False, **settings: str) -> dict[str, str]:
    """This process's environment with ``home`` and ``settings``, Prefect's telemetry off.

    Without ``inherit`` this process's PREFECT_ settings are left out, so a test's or a
    stack's processes see only their own; with it only its API address is, so a user's own
    server settings (a database URL, say) still apply to a server started for them.
    """
    inherited = ("PREFECT_API_URL", "PREFECT_UI_URL") if inherit else ("PREFECT_",)
    env = {k: v for k, v in os.environ.items() if not k.startswith(inherited)}
    return env | {
        "PREFECT_HOME": str(home),
        # Machines without internet would log a failed call home on every start.
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        **settings,
    }


def spawn_prefect_server(
    home: Path,
    port: int,
    *,
    ui: bool = True,
    services: bool = True,
    log: Path | None = None,
    settings: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    inherit: bool = False,
    tied: bool = False,
) -> subprocess.Popen[bytes]:
    """Start `prefect server start` on 127.0.0.1:``port`` without waiting for it.

    ``services`` False leaves out the scheduler and late-runs services; ``settings`` are extra
    PREFECT_ variables; ``inherit`` as in ``prefect_env``; ``tied`` makes the server end when
    this process does, even by SIGKILL. The UI is told its own API address: on any port but
    4200 it would otherwise show "Can't connect to Server API".
    """
    env = prefect_env(home, inherit, **(settings or {}))
    # A server never calls the Messages API: the key stays out of its process and anything
    # it might log.
    env.pop("ANTHROPIC_API_KEY", None)
    command = [sys.executable, "-m", "batchline.prefect_server"]
    if tied:
        command += ["--parent", str(os.getpid())]
    command += ["server", "start", "--host", "127.0.0.1", "--port", str(port)]
    if ui:
        env["PREFECT_UI_API_URL"] = f"http://127.0.0.1:{port}/api"
    else:
        command.append("--no-ui")
    if not services:
        command += ["--no-scheduler", "--no-late-runs"]
    home.mkdir(parents=True, exist_ok=True)
    return spawn(command, env, log, cwd)


def await_prefect_server(
    process: subprocess.Popen[bytes], port: int, timeout: float, log: Path | None
) -> str:
    """Wait until the server ``process`` on ``port`` answers; returns its API URL."""
    api_url = f"http://127.0.0.1:{port}/api"
    await_ready(process, lambda: healthy(api_url), timeout, "the Prefect server", log)
    return api_url


def wait_for(
    ready: Callable[[], object],
    timeout: float,
    what: str,
    process: subprocess.Popen[bytes] | None = None,
) -> None:
    """Poll ``ready`` until truthy; fail early if ``process`` exits meanwhile."""
    deadline = time.monotonic() + timeout
    while not ready():
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} was not ready within {timeout:.0f}s")
        time.sleep(0.3)


def stop(*processes: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """Stop processes started here and everything they started (their own process groups)."""
    for process in processes:
        _signal_group(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
    for process in processes:  # the leader may be gone while its children linger
        _signal_group(process.pid, signal.SIGKILL)
        process.wait()


def stop_groups(pids: list[int], grace: float = 10.0) -> None:
    """Like ``stop``, for process groups another process started (no children of this one)."""
    for pid in pids:
        _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_signal_group(pid, 0) for pid in pids):
        time.sleep(0.2)
    for pid in pids:
        _signal_group(pid, signal.SIGKILL)


def spawn(
    command: list[str], env: dict[str, str], log: Path | None, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """``command`` in its own process group, its output appended to ``log`` (or discarded)."""
    with log.open("ab") if log else open(os.devnull, "wb") as out:
        return subprocess.Popen(
            command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _signal_group(pid: int, signum: int) -> bool:
    """Send ``signum`` to the process group led by ``pid``; False when the group is gone."""
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        return False
    return True


def await_ready(
    process: subprocess.Popen[bytes],
    ready: Callable[[], object],
    timeout: float,
    what: str,
    log: Path | None,
) -> None:
    """``wait_for`` a process just started; on failure stop it and attach the tail of its log."""
    try:
        wait_for(ready, timeout, what, process)
    except BaseException as error:
        stop(process)
        if log is not None:
            error.add_note(f"{log}:\n{log.read_text(errors='replace')[-4000:]}")
        raise


def healthy(api_url: str) -> bool:
    """The Prefect API at ``api_url`` answers its health check."""
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False
