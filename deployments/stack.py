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
import json
import os
import subprocess
import sys
from pathlib import Path

# Run as a script, Python puts this file's folder on the path; deployments/ is not installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from deployments import local
from deployments.local import free_port, stop, wait_for

# What the integration tests start and stop their stack with.
__all__ = [
    "client_env",
    "create_pool",
    "deploy",
    "free_port",
    "install_zombie_automation",
    "start_emulator",
    "start_server",
    "start_worker",
    "stop",
    "wait_for",
]

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
POOL = "batchline-process"
# Flow runs in Pending or Running at once (a suspended run holds no slot), sized for two cores:
# two pipeline runs (say two backfill days) and two short ones (a check, a backfill starting days).
POOL_LIMIT = 4
STATE = REPO / ".batchline-stack"
# The emulator never checks keys; this one only keeps the SDK from refusing to start.
EMULATOR_KEY = "sk-ant-local-emulator-not-a-real-key"
# A first start creates the database: minutes on a busy machine.
SERVER_TIMEOUT = 600.0


def client_env(api_url: str, home: Path, **extra: str) -> dict[str, str]:
    """Environment of a Prefect client (CLI, worker, flow runs) talking to ``api_url``."""
    # Merged here, not passed as keywords: a setting is never taken for prefect_env's `inherit`.
    return local.prefect_env(home) | {"PREFECT_API_URL": api_url, **extra}


def start_server(home: Path, port: int, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start `prefect server start` with its UI on ``port``; returns the process and API URL."""
    process = spawn_server(home, port, log)
    return process, local.await_prefect_server(process, port, SERVER_TIMEOUT, log)


def spawn_server(home: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """The server of ``start_server``, not yet waited for."""
    database = os.environ.get("PREFECT_API_DATABASE_CONNECTION_URL")
    settings = {"PREFECT_API_DATABASE_CONNECTION_URL": database} if database else {}
    return local.spawn_prefect_server(home, port, log=log, settings=settings, cwd=REPO)


def create_pool(env: dict[str, str], limit: int = POOL_LIMIT, pool: str = POOL) -> None:
    """The process pool, starting at most ``limit`` flow runs at once.

    Set here rather than in prefect.yaml: its ``work_pool`` only names the pool a deployment uses
    (Prefect 3.9 ignores other keys there), and ``work-pool create`` takes no limit.
    """
    prefect(["work-pool", "create", pool, "--type", "process", "--overwrite"], env)
    prefect(["work-pool", "set-concurrency-limit", pool, str(limit)], env)


def start_worker(
    env: dict[str, str], log: Path, cwd: Path = REPO, pool: str = POOL
) -> subprocess.Popen[bytes]:
    """A process worker on ``pool``; each flow run becomes its own subprocess.

    The flows come from the installed package, so ``cwd`` can be any folder.
    """
    return local.spawn([str(BIN / "prefect"), "worker", "start", "--pool", pool], env, log, cwd)


def start_emulator(
    db: Path, log: Path, processing_seconds: float, port: int = 0
) -> tuple[subprocess.Popen[bytes], str]:
    """The Message Batches API emulator with its state in ``db``; returns its base URL."""
    options = ["--db", str(db), "--processing-seconds", str(processing_seconds)]
    return local.start_emulator(*options, port=port, log=log)


def deploy(env: dict[str, str], project: str = "", pool: str = POOL) -> None:
    """`prefect deploy --all` from the repo root, each deployment named ``project`` + flow name.

    prefect.yaml reads the prefix from BATCHLINE_PROJECT (flows/names.py); without a project it
    is left unset, as when someone types `prefect deploy --all`.
    """
    env = {k: v for k, v in env.items() if k != "BATCHLINE_PROJECT"}
    if project:
        env["BATCHLINE_PROJECT"] = project
    prefect(["--no-prompt", "deploy", "--all", "--pool", pool], env)


def install_zombie_automation(env: dict[str, str], heartbeat_seconds: int) -> None:
    """The automation that marks a run Crashed when its heartbeats stop (deployments/zombies.py).

    The worker's flow runs must beat at ``heartbeat_seconds``: start it with ``heartbeat_env``.
    """
    script = [sys.executable, str(REPO / "deployments" / "zombies.py")]
    run([*script, "--heartbeat-seconds", str(heartbeat_seconds)], env)


def heartbeat_env(heartbeat_seconds: int) -> dict[str, str]:
    """What makes the flow runs of a worker started with it beat every ``heartbeat_seconds``."""
    return {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(heartbeat_seconds)}


def prefect(args: list[str], env: dict[str, str]) -> None:
    """Run a Prefect CLI command to completion, raising with its output when it fails."""
    run([str(BIN / "prefect"), *args], env)


def run(command: list[str], env: dict[str, str]) -> None:
    """Run ``command`` from the repo root to completion, raising with its output when it fails."""
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")


def up(args: argparse.Namespace) -> int:
    state: Path = args.state
    state.mkdir(parents=True, exist_ok=True)
    pids_file = state / "pids.json"
    if running := _running(pids_file):
        print(
            f"a stack is already up ({', '.join(running)}): python deployments/stack.py down first",
            file=sys.stderr,
        )
        return 1
    home = state / "prefect"
    home.mkdir(exist_ok=True)
    pids: dict[str, int] = {}

    def started(name: str, process: subprocess.Popen[bytes]) -> None:
        # Recorded at once, so `down` stops it even if `up` fails or is killed right after.
        pids[name] = process.pid
        pids_file.write_text(json.dumps(pids))

    try:
        log = state / "server.log"
        server = spawn_server(home, args.port, log)
        started("server", server)
        api_url = local.await_prefect_server(server, args.port, SERVER_TIMEOUT, log)
        # Imported here: it imports Prefect (1.5 s), which `down` and `--help` do not need.
        from deployments.zombies import HEARTBEAT_SECONDS

        heartbeat = args.heartbeat_seconds or HEARTBEAT_SECONDS
        env = client_env(api_url, home, **heartbeat_env(heartbeat))
        if args.emulator:
            emulator, base_url = start_emulator(
                state / "emulator.db",
                state / "emulator.log",
                args.processing_seconds,
                args.emulator_port,
            )
            started("emulator", emulator)
            env |= {"ANTHROPIC_BASE_URL": base_url, "ANTHROPIC_API_KEY": EMULATOR_KEY}
        pool = args.project + POOL
        create_pool(env, args.pool_limit, pool)
        started("worker", start_worker(env, state / "worker.log", pool=pool))
        deploy(env, args.project, pool)
        install_zombie_automation(env, heartbeat)
    except BaseException:
        # Nothing half-started stays behind to block the next `up` (its ports, its pids file).
        local.stop_groups(list(pids.values()))
        pids_file.unlink(missing_ok=True)
        raise
    print(f"Prefect UI: http://127.0.0.1:{args.port}   (API {api_url})")
    if args.emulator:
        print(f"emulator: {base_url}   (state in {state / 'emulator.db'})")
    where = "" if state == STATE else f" --state {state}"
    print(f"logs: {state}/*.log   stop with: python deployments/stack.py down{where}")
    print("for prefect commands in another shell (prefect deployment run ...), first:")
    print(f"export PREFECT_API_URL={api_url}")
    return 0


def _running(pids_file: Path) -> list[str]:
    """Names of the recorded stack processes still alive; forgets a stack that is all gone."""
    if not pids_file.exists():
        return []
    pids: dict[str, int] = json.loads(pids_file.read_text())
    alive = [name for name, pid in pids.items() if Path(f"/proc/{pid}").exists()]
    if not alive:
        pids_file.unlink()
    return alive


def down(args: argparse.Namespace) -> int:
    pids_file = args.state / "pids.json"
    if not pids_file.exists():
        print("no stack is up", file=sys.stderr)
        return 0
    pids = json.loads(pids_file.read_text())
    local.stop_groups(list(pids.values()))
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
        "--pool-limit",
        type=int,
        default=POOL_LIMIT,
        help="flow runs the work pool starts at once (docs/deployments.md: how to size it)",
    )
    start.add_argument(
        "--project",
        default="",
        help="prefix of every deployment and of the pool (acme- gives acme-batchline-pipeline), "
        "so that two projects share one server",
    )
    start.add_argument(
        "--heartbeat-seconds",
        type=int,
        help="flow runs' heartbeat in seconds, at least 30 (default: Prefect's own); "
        "deployments/zombies.py marks a run Crashed when its heartbeats stop",
    )
    start.add_argument(
        "--no-emulator",
        dest="emulator",
        action="store_false",
        help="use the real API: export ANTHROPIC_API_KEY or save an AnthropicCredentials block",
    )
    start.set_defaults(handler=up)
    stop_parser = commands.add_parser("down", help="stop what `up` started")
    stop_parser.set_defaults(handler=down)
    for command in (start, stop_parser):
        command.add_argument(
            "--state",
            type=Path,
            default=STATE,
            help=f"databases, logs and process ids (default {STATE})",
        )
    args = parser.parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
