"""Which Prefect API a CLI run talks to, and the Prefect servers batchline starts for it.

Prefect's own temporary server gives itself 20 s to start (a new home also runs every database
migration first), shares the terminal's process group, so Ctrl-C kills it before the run can
clean up, and outlives a SIGKILLed CLI. So batchline picks the API itself before Prefect is
imported: a configured ``PREFECT_API_URL``; else the local server of ``batchline server start``
when it answers; else a private server for this run only, which starts in its own session, is
given minutes, logs to a file under ``PREFECT_HOME`` and dies with the CLI, however it dies.

The servers run ``python -m prefect server start`` through ``serve`` below, so that the server
process itself can ask the kernel to be killed with its parent. This module imports nothing of
Prefect.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import logging
import os
import runpy
import signal
import socket
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NoReturn

from batchline import processes

STATE_FILE = "batchline-server.json"
SERVER_LOG = "batchline-server.log"
RUN_SERVER_LOG = "batchline-run-server.log"
LOCK_FILE = "batchline-server.lock"
# Long enough for a first start (every migration) on a slow, busy machine; an exit of the
# server process ends the wait at once, so a real failure still shows quickly.
STARTUP_TIMEOUT = 900.0
DEFAULT_PORT = 4200
# The ephemeral flag keeps the UI and every service a single run has no use for off; fewer
# writers also means fewer sqlite "database is locked" retries.
RUN_SERVER_SETTINGS = {"PREFECT__SERVER_EPHEMERAL": "1", "PREFECT_SERVER_UI_ENABLED": "false"}
# No upgrade banners: the UI is for looking at runs.
LOCAL_SERVER_SETTINGS = {"PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false"}
_PR_SET_PDEATHSIG = 1


class ServerError(Exception):
    """A local Prefect server could not be started as asked; the message says what to change."""


@dataclass(frozen=True)
class LocalServer:
    """The background server of ``batchline server start``, as recorded under PREFECT_HOME."""

    pid: int
    api_url: str

    @property
    def ui_url(self) -> str:
        return self.api_url.removesuffix("/api")

    def run_url(self, flow_run_id: str) -> str:
        """Where the UI shows one flow run: graph, task runs, artifacts."""
        return f"{self.ui_url}/runs/flow-run/{flow_run_id}"


@dataclass(frozen=True)
class PrefectApi:
    """The API a CLI run uses: configured, the local server, or a server for this run alone."""

    kind: Literal["configured", "local", "run"]
    home: Path
    api_url: str | None = None
    local: LocalServer | None = None

    @property
    def prepares_database(self) -> bool:
        """True when this run's server must first create Prefect's database (a minute or so)."""
        return self.kind == "run" and is_new_home(self.home)


def prefect_home() -> Path:
    """PREFECT_HOME as Prefect resolves it: the environment, else ``~/.prefect``."""
    return Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser()


def configured_api_url(home: Path) -> str | None:
    """PREFECT_API_URL from the environment, else from the active Prefect profile."""
    if url := os.environ.get("PREFECT_API_URL"):
        return url
    profiles = Path(os.environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml")
    try:
        document = tomllib.loads(profiles.expanduser().read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return None
    active = os.environ.get("PREFECT_PROFILE") or document.get("active", "ephemeral")
    url = document.get("profiles", {}).get(active, {}).get("PREFECT_API_URL")
    return str(url) if url else None


def is_new_home(home: Path) -> bool:
    """No Prefect database yet under ``home`` (the default SQLite one)."""
    configured = ("PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_SERVER_DATABASE_CONNECTION_URL")
    return (
        not any(os.environ.get(name) for name in configured) and not (home / "prefect.db").exists()
    )


def choose_api(home: Path | None = None) -> PrefectApi:
    """The API a CLI run should use; starts nothing."""
    home = prefect_home() if home is None else home
    if url := configured_api_url(home):
        return PrefectApi("configured", home, api_url=url)
    if server := running_server(home):
        return PrefectApi("local", home, api_url=server.api_url, local=server)
    return PrefectApi("run", home)


@contextlib.contextmanager
def using(api: PrefectApi) -> Iterator[Callable[[], None]]:
    """Point this process at ``api`` for the ``with`` block; yields a wait-until-ready call.

    For a run's own server the server is started here, and the caller should import Prefect
    and its flows before calling the yielded function, so the two start-ups overlap. The
    server is stopped when the block ends, whatever ends it.
    """
    if api.kind != "run":
        with _environment(PREFECT_API_URL=api.api_url):
            yield lambda: None
        return
    api.home.mkdir(parents=True, exist_ok=True)
    port = processes.free_port()
    log = api.home / RUN_SERVER_LOG
    with contextlib.ExitStack() as starting:
        starting.enter_context(_startup_lock(api.home))
        process = processes.spawn_prefect_server(
            api.home, port, ui=False, log=log, settings=RUN_SERVER_SETTINGS, inherit=True, tied=True
        )

        def ready() -> None:
            processes.await_prefect_server(process, port, STARTUP_TIMEOUT, log)
            starting.close()

        try:
            with _environment(
                PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
                # No UI is served and the server is gone after the run: Prefect's "View at"
                # link would lead nowhere.
                PREFECT_UI_URL="",
                DO_NOT_TRACK=os.environ.get("DO_NOT_TRACK", "1"),
            ):
                yield ready
        finally:
            processes.stop(process, grace=15)


@contextlib.contextmanager
def _environment(**values: str | None) -> Iterator[None]:
    """``values`` in this process's environment for the block (None: left as it is)."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update({name: value for name, value in values.items() if value is not None})
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _startup_lock(home: Path) -> Iterator[None]:
    """Held while a server of ``home`` starts: two first runs must not migrate one database."""
    with (home / LOCK_FILE).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def running_server(home: Path) -> LocalServer | None:
    """The local server recorded under ``home``, if its process lives and its API answers."""
    server = _recorded(home)
    if server is None or not _is_ours(server.pid) or not processes.healthy(server.api_url):
        return None
    return server


def start_server(home: Path, port: int = DEFAULT_PORT) -> tuple[LocalServer, bool]:
    """Start the local server with its UI in the background, unless it already runs.

    Returns the server and whether this call started it. It outlives this process: it is
    stopped by ``stop_server``.
    """
    if server := running_server(home):
        return server, False
    _forget_stale(home)
    if not _port_free(port):
        raise ServerError(f"port {port} is in use: choose another with --port")
    home.mkdir(parents=True, exist_ok=True)
    with _startup_lock(home):
        process = processes.spawn_prefect_server(
            home, port, ui=True, log=home / SERVER_LOG, settings=LOCAL_SERVER_SETTINGS, inherit=True
        )
        server = LocalServer(process.pid, f"http://127.0.0.1:{port}/api")
        (home / STATE_FILE).write_text(json.dumps({"pid": server.pid, "api_url": server.api_url}))
        try:
            processes.await_prefect_server(process, port, STARTUP_TIMEOUT, home / SERVER_LOG)
        except BaseException:
            (home / STATE_FILE).unlink(missing_ok=True)
            raise
    return server, True


def stop_server(home: Path) -> LocalServer | None:
    """Stop the local server of ``home`` and everything it started; None if none was running."""
    server = _recorded(home)
    if server is not None and _is_ours(server.pid):
        processes.stop_groups([server.pid], grace=30)
    else:
        server = None
    (home / STATE_FILE).unlink(missing_ok=True)
    return server


def _recorded(home: Path) -> LocalServer | None:
    try:
        state = json.loads((home / STATE_FILE).read_text())
        return LocalServer(int(state["pid"]), str(state["api_url"]))
    except (OSError, ValueError, KeyError):
        return None


def _forget_stale(home: Path) -> None:
    """A recorded server whose process is gone (a reboot, a kill) leaves only its record."""
    server = _recorded(home)
    if server is not None and not _is_ours(server.pid):
        (home / STATE_FILE).unlink(missing_ok=True)


def _is_ours(pid: int) -> bool:
    """``pid`` runs a server through this module (not another process that reused the pid)."""
    try:
        return __name__.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class FlowRunWatch(logging.Handler):
    """Learns the id of the first flow run that logs (the top-level one) from Prefect's logs."""

    def __init__(self, on_start: Callable[[str], None]) -> None:
        super().__init__(logging.INFO)
        self.flow_run_id: str | None = None
        self._on_start = on_start

    def emit(self, record: logging.LogRecord) -> None:
        flow_run_id = getattr(record, "flow_run_id", None)
        if self.flow_run_id is None and flow_run_id:
            self.flow_run_id = str(flow_run_id)
            self._on_start(self.flow_run_id)

    @contextlib.contextmanager
    def watching(self) -> Iterator[FlowRunWatch]:
        logger = logging.getLogger("prefect.flow_runs")
        logger.addHandler(self)
        try:
            yield self
        finally:
            logger.removeHandler(self)


# --- the server process -------------------------------------------------------------------


def serve(argv: list[str]) -> NoReturn:
    """Entry of a server process: ``[--parent PID] PREFECT-CLI-ARGS...``.

    With ``--parent`` the process ends when that parent does, even when the parent is
    SIGKILLed: the kernel sends SIGTERM (Linux ``PR_SET_PDEATHSIG``, set in the server process
    itself rather than in a ``preexec_fn``, which is unsafe once the parent has threads), and a
    thread watching the parent pid covers other systems and a SIGTERM that does not end it.
    """
    if argv[:1] == ["--parent"]:
        _die_with(int(argv[1]))
        argv = argv[2:]
    sys.argv = ["prefect", *argv]
    runpy.run_module("prefect", run_name="__main__", alter_sys=True)
    sys.exit(0)


def _die_with(parent: int) -> None:
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(20)  # a graceful shutdown that hangs must not keep the process alive
    os._exit(1)


if __name__ == "__main__":
    serve(sys.argv[1:])
