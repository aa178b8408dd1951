"""`batchline run` and the Prefect servers it uses: real server processes, the emulator over
loopback, the CLI in a subprocess as a user runs it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from batchline.emulator import Emulator
from deployments import local
from tests.conftest import TEST_API_KEY
from tests.support import cli_env, finish, run_cli, submitted_batches, write_documents

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
RUN_PAGE = re.compile(r"run in the Prefect UI: (http://\S+)")


def test_runs_on_new_homes_finish_cleanly_while_every_core_is_busy(
    tmp_path: Path, emulator_factory: Callable[..., Emulator]
) -> None:
    """Prefect's own temporary server timed out here: 20 s for a first start on a busy box."""
    emulator = emulator_factory()
    docs = write_documents(tmp_path / "docs", 12)
    busy = [
        local.spawn([sys.executable, "-c", "while True: pass"], dict(os.environ), None)
        for _ in range(3)
    ]
    try:
        for attempt in range(3):
            env = cli_env(emulator, tmp_path / f"home-{attempt}")
            output = tmp_path / f"out-{attempt}"
            code, out = finish(run_cli(tmp_path / "docs", output, env), timeout=900)
            assert code == 0, out
            assert "Traceback" not in out and "ERROR" not in out, out
            assert "Preparing Prefect's database" in out
            assert sorted(pd.read_parquet(output / "results").doc_id) == sorted(docs)
    finally:
        local.stop(*busy, grace=0)


def test_sigkill_of_a_run_leaves_no_server_behind(
    tmp_path: Path, emulator_factory: Callable[..., Emulator]
) -> None:
    emulator = emulator_factory(processing_seconds=120)
    write_documents(tmp_path / "docs", 5)
    home, output = tmp_path / "home", tmp_path / "out"
    run = run_cli(tmp_path / "docs", output, cli_env(emulator, home))
    local.wait_for(lambda: submitted_batches(output), 600, "the run to submit its batch", run)
    servers = _servers_of(home)
    assert len(servers) == 1, servers
    # A session of its own: a Ctrl-C at the run's terminal goes to the run's process group only.
    assert os.getsid(servers[0]) == servers[0] != os.getpgid(run.pid)
    # The server never calls the Messages API, so the key is not even in its environment.
    assert TEST_API_KEY.encode() not in Path(f"/proc/{servers[0]}/environ").read_bytes()

    run.kill()  # as an OOM kill or a CI timeout would
    run.wait()
    assert run.stdout is not None
    run.stdout.close()
    local.wait_for(lambda: not _servers_of(home), 60, "the killed run's server to exit")


def test_a_run_with_the_local_server_up_is_in_the_ui(
    tmp_path: Path, emulator_factory: Callable[..., Emulator]
) -> None:
    emulator = emulator_factory()
    write_documents(tmp_path / "docs", 6)
    env = cli_env(emulator, tmp_path / "home")
    port = local.free_port()

    def server(action: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "batchline.cli", "server", action, "--port", str(port)]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)

    started = server("start")
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert f"http://127.0.0.1:{port}" in started.stdout
        assert "Preparing Prefect's database" in started.stdout  # a new home
        again = server("start")
        assert again.returncode == 0 and "already running" in again.stdout
        assert f"http://127.0.0.1:{port}" in server("status").stdout

        code, out = finish(run_cli(tmp_path / "docs", tmp_path / "out", env))
        assert code == 0, out
        assert "Traceback" not in out and "ERROR" not in out, out
        pages = RUN_PAGE.findall(out)
        assert len(pages) == 2 and pages[0] == pages[1], out  # at the start and at the end
        assert pages[0].startswith(f"http://127.0.0.1:{port}/runs/flow-run/")
        if shutil.which("chromium") is None:
            pytest.skip("chromium is not installed: deployments/screenshot.sh installs it")
        page = _rendered(pages[0], tmp_path / "run")
        assert "Can't connect" not in page
        for task in ("load-documents", "build-requests", "submit-new-1", "write-parquet"):
            assert task in page, task
        # The same run in the UI's V2 pages, whose tab can be opened from the address: the V1
        # page drops ?tab=Artifacts while the run is still loading.
        v2 = pages[0].replace("/runs/", "/v2/runs/", 1)
        artifacts = _rendered(f"{v2}?tab=Artifacts", tmp_path / "artifacts")
        assert "batchline-summary" in artifacts and "Rows, tokens and cost" in artifacts
    finally:
        stopped = server("stop")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert server("status").returncode == 1


def _rendered(url: str, stem: Path) -> str:
    """The page's DOM once the UI's single-page app has drawn it, through headless Chromium."""
    png, dom = stem.with_suffix(".png"), stem.with_suffix(".html")
    subprocess.run(
        [str(REPO / "deployments" / "screenshot.sh"), url, str(png), str(dom)],
        env={**os.environ, "BATCHLINE_NO_INSTALL": "1"},
        check=True,
        capture_output=True,
        timeout=300,
    )
    return dom.read_text()


def _servers_of(home: Path) -> list[int]:
    """Pids of the Prefect servers batchline started with ``home`` as their PREFECT_HOME."""
    wanted = f"PREFECT_HOME={home}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            command = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"batchline.prefect_server" in command and wanted in environ:
            pids.append(int(proc.name))
    return pids
