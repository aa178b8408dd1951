"""Bring a local batchline stack up or down in one command each.

    python deployments/stack.py up     # Prefect server + UI, work pool, worker, emulator, deploy
    python deployments/stack.py down   # stop everything `up` started

State (SQLite databases, logs, process ids) lives under ``.batchline-stack/`` at the repo root.
The server keeps its SQLite default unless PREFECT_API_DATABASE_CONNECTION_URL names another
database (a postgresql+asyncpg:// URL, say). The integration tests start their stack with these
same functions.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
POOL = "batchline-process"
STATE = REPO / ".batchline-stack"
# The emulator never checks keys; this one only keeps the SDK from refusing to start.
EMULATOR_KEY = "sk-ant-local-emulator-not-a-real-key"
_LISTENING = re.compile(r"listening on (http://\S+)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def client_env(api_url: str, home: Path, **extra: str) -> dict[str, str]:
    """Environment of a Prefect client (CLI, worker, flow runs) talking to ``api_url``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return env | {
        "PREFECT_API_URL": api_url,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        **extra,
    }


def start_server(home: Path, port: int, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start `prefect server start` on ``port``; returns the process and its API URL.

    The UI is told its own API address: on any port but 4200 it would otherwise show
    "Can't connect to Server API".
    """
    api_url = f"http://127.0.0.1:{port}/api"
    env = client_env(api_url, home, PREFECT_UI_API_URL=api_url)
    env.pop("PREFECT_API_URL")  # the server serves the API; it is no client of one
    database = os.environ.get("PREFECT_API_DATABASE_CONNECTION_URL")
    if database:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database
    command = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    process = _spawn(command, env, log)
    wait_for(lambda: _healthy(api_url), 180, f"the Prefect server (log: {log})", process)
    return process, api_url


def create_pool(env: dict[str, str]) -> None:
    prefect(["work-pool", "create", POOL, "--type", "process", "--overwrite"], env)


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """A process worker on the pool; each flow run becomes its own subprocess."""
    return _spawn([str(BIN / "prefect"), "worker", "start", "--pool", POOL], env, log)


def start_emulator(
    db: Path, log: Path, processing_seconds: float, port: int = 0
) -> tuple[subprocess.Popen[bytes], str]:
    """The Message Batches API emulator with its state in ``db``; returns its base URL."""
    command = [
        str(BIN / "batchline"),
        "emulator",
        "--port",
        str(port),
        "--db",
        str(db),
        "--processing-seconds",
        str(processing_seconds),
    ]
    process = _spawn(command, dict(os.environ), log)
    wait_for(lambda: _LISTENING.search(log.read_text()), 60, "the emulator", process)
    match = _LISTENING.search(log.read_text())
    assert match is not None
    return process, match.group(1)


def deploy(env: dict[str, str], *names: str) -> None:
    """`prefect deploy` from the repo root: every deployment of prefect.yaml, or the named ones."""
    selection = [arg for name in names for arg in ("--name", name)] or ["--all"]
    prefect(["--no-prompt", "deploy", *selection], env)


def prefect(args: list[str], env: dict[str, str]) -> None:
    """Run a Prefect CLI command to completion, raising with its output when it fails."""
    done = subprocess.run(
        [str(BIN / "prefect"), *args], env=env, cwd=REPO, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"prefect {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")


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
    """Like ``stop``, for process groups started by an earlier command (``up``)."""
    for pid in pids:
        _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_signal_group(pid, 0) for pid in pids):
        time.sleep(0.2)
    for pid in pids:
        _signal_group(pid, signal.SIGKILL)


def _signal_group(pid: int, signum: int) -> bool:
    """Send ``signum`` to the process group led by ``pid``; False when the group is gone."""
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        return False
    return True


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


def _spawn(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            command, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def up(args: argparse.Namespace) -> int:
    STATE.mkdir(exist_ok=True)
    if (STATE / "pids.json").exists():
        print("a stack is already up (python deployments/stack.py down first)", file=sys.stderr)
        return 1
    home = STATE / "prefect"
    home.mkdir(exist_ok=True)
    pids: dict[str, int] = {}
    try:
        server, api_url = start_server(home, args.port, STATE / "server.log")
        pids["server"] = server.pid
        env = client_env(api_url, home)
        if args.emulator:
            emulator, base_url = start_emulator(
                STATE / "emulator.db",
                STATE / "emulator.log",
                args.processing_seconds,
                args.emulator_port,
            )
            pids["emulator"] = emulator.pid
            env |= {"ANTHROPIC_BASE_URL": base_url, "ANTHROPIC_API_KEY": EMULATOR_KEY}
        create_pool(env)
        pids["worker"] = start_worker(env, STATE / "worker.log").pid
        deploy(env)
    finally:
        (STATE / "pids.json").write_text(json.dumps(pids))
    print(f"Prefect UI: http://127.0.0.1:{args.port}   (API {api_url})")
    if args.emulator:
        print(f"emulator: {base_url}   (state in {STATE / 'emulator.db'})")
    print(f"logs: {STATE}/*.log   stop with: python deployments/stack.py down")
    return 0


def down(_: argparse.Namespace) -> int:
    pids_file = STATE / "pids.json"
    if not pids_file.exists():
        print("no stack is up", file=sys.stderr)
        return 0
    pids = json.loads(pids_file.read_text())
    stop_groups(list(pids.values()))
    for name, pid in pids.items():
        print(f"stopped {name} ({pid})")
    pids_file.unlink()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("up", help="start server, worker and emulator; deploy")
    start.add_argument("--port", type=int, default=4200, help="Prefect server and UI port")
    start.add_argument("--emulator-port", type=int, default=8765)
    start.add_argument(
        "--processing-seconds", type=float, default=60.0, help="how long emulated batches take"
    )
    start.add_argument(
        "--no-emulator",
        dest="emulator",
        action="store_false",
        help="use the real API: export ANTHROPIC_API_KEY or save an AnthropicCredentials block",
    )
    start.set_defaults(handler=up)
    commands.add_parser("down", help="stop what `up` started").set_defaults(handler=down)
    args = parser.parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
