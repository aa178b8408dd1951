"""Fixtures of the reliability suite: one Prefect server for every CLI run, a shared corpus."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from batchline.emulator import Emulator
from deployments.local import prefect_server
from tests.support import cli_env, write_documents

CORPUS_SIZE = 20


@pytest.fixture(scope="session")
def prefect_server_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """PREFECT_HOME of the suite's server: its database, which the secrets test scans."""
    return tmp_path_factory.mktemp("prefect-server")


@pytest.fixture(scope="session")
def prefect_api_url(prefect_server_home: Path) -> Iterator[str]:
    """A `prefect server start` shared by the suite: CLI runs skip the 15 s temporary server."""
    log = prefect_server_home / "server.log"
    with prefect_server(prefect_server_home, ui=False, services=False, log=log, timeout=120) as url:
        yield url


@pytest.fixture
def prefect_api(prefect_api_url: str) -> Iterator[str]:
    """Point flows run in this process at the shared server; yields its API URL."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: prefect_api_url}):
        yield prefect_api_url
        # Send this process's queued logs and events while the server is there to take them.
        APILogWorker.drain_all(timeout=10)
        EventsWorker.drain_all(timeout=10)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, set[str]]:
    """A folder of documents no test modifies, and their doc_ids."""
    folder = tmp_path_factory.mktemp("corpus")
    return folder, set(write_documents(folder, CORPUS_SIZE))


@pytest.fixture
def emulator_env(
    tmp_path: Path, prefect_api_url: str, emulator_factory: Callable[..., Emulator]
) -> Callable[..., tuple[Emulator, dict[str, str]]]:
    """`emulator_env(**settings)`: an emulator, and the environment of a CLI run against it and
    the shared Prefect server."""

    def start(**settings: Any) -> tuple[Emulator, dict[str, str]]:
        emulator = emulator_factory(**settings)
        return emulator, cli_env(emulator, tmp_path / "prefect-home", prefect_api_url)

    return start
