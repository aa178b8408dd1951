"""Which Prefect API a CLI run picks, from the environment, the profile and the recorded server."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from batchline import prefect_server
from batchline.prefect_server import FlowRunWatch, LocalServer, choose_api


@pytest.fixture(autouse=True)
def _no_prefect_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [k for k in os.environ if k.startswith("PREFECT_")]:
        monkeypatch.delenv(name)


def test_a_configured_api_url_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFECT_API_URL", "http://prefect.example:4200/api")
    api = choose_api(tmp_path)
    assert (api.kind, api.api_url) == ("configured", "http://prefect.example:4200/api")


def test_the_active_profile_counts_as_configured(tmp_path: Path) -> None:
    (tmp_path / "profiles.toml").write_text(
        'active = "work"\n[profiles.work]\nPREFECT_API_URL = "http://10.0.0.5:4200/api"\n'
    )
    assert choose_api(tmp_path).api_url == "http://10.0.0.5:4200/api"


def test_a_new_home_gets_a_run_server_that_prepares_the_database(tmp_path: Path) -> None:
    api = choose_api(tmp_path / "new-home")
    assert api.kind == "run" and api.prepares_database
    (tmp_path / "new-home").mkdir()
    (tmp_path / "new-home" / "prefect.db").touch()
    assert not choose_api(tmp_path / "new-home").prepares_database


def test_a_recorded_server_whose_process_is_gone_is_not_used(tmp_path: Path) -> None:
    # A pid far above pid_max: no process has it.
    state = {"pid": 2**30, "api_url": "http://127.0.0.1:9/api"}
    (tmp_path / prefect_server.STATE_FILE).write_text(json.dumps(state))
    assert choose_api(tmp_path).kind == "run"
    assert prefect_server.stop_server(tmp_path) is None
    assert not (tmp_path / prefect_server.STATE_FILE).exists()


def test_the_run_page_address() -> None:
    server = LocalServer(1, "http://127.0.0.1:4300/api")
    assert server.run_url("abc") == "http://127.0.0.1:4300/runs/flow-run/abc"


def test_the_watch_reports_the_first_flow_run_only(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="prefect.flow_runs")  # as Prefect's logging sets it
    started: list[str] = []
    with FlowRunWatch(started.append).watching() as watch:
        logger = logging.getLogger("prefect.flow_runs")
        # send_to_api=False: Prefect's API handler would otherwise start a temporary server for
        # these made-up records, which outlives the session.
        logger.info("Beginning flow run", extra={"flow_run_id": "top", "send_to_api": False})
        logger.info("Beginning subflow run", extra={"flow_run_id": "sub", "send_to_api": False})
    assert started == ["top"] and watch.flow_run_id == "top"


def test_using_an_api_sets_its_address_for_the_block_only(tmp_path: Path) -> None:
    api = prefect_server.PrefectApi("configured", tmp_path, api_url="http://10.0.0.5:4200/api")
    with prefect_server.using(api) as ready:
        ready()
        assert os.environ["PREFECT_API_URL"] == "http://10.0.0.5:4200/api"
    assert "PREFECT_API_URL" not in os.environ
