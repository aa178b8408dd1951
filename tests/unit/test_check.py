"""When the checks of a suspended run come, and how a run names its project's deployments."""

from __future__ import annotations

from datetime import timedelta

import pytest
from prefect.runtime import deployment, flow_run

from flows.check import FIRST_CHECK, check_delay
from flows.names import CHECK_FLOW, sibling_deployment


def test_checks_come_soon_then_later_each_time_up_to_the_runs_max_poll_interval() -> None:
    cap = timedelta(seconds=300)
    delays = [check_delay(n, cap).total_seconds() for n in range(8)]
    assert delays == [15, 30, 60, 120, 240, 300, 300, 300]
    # A 24-hour batch costs about one check per max_poll_interval, not one a minute.
    day, waited, checks = timedelta(hours=24), timedelta(), 0
    while waited < day:
        waited += check_delay(checks, cap)
        checks += 1
    assert checks < 24 * 60 * 60 / 300 + 8
    # A max_poll_interval below the first delay does not make checks more frequent than that.
    assert check_delay(5, timedelta(seconds=1)) == FIRST_CHECK


@pytest.mark.parametrize(
    ("own", "expected"),
    [
        ("batchline-pipeline", "batchline-check/batchline-check"),
        ("acme-batchline-pipeline", "batchline-check/acme-batchline-check"),
    ],
)
def test_a_run_finds_its_projects_check_deployment_from_its_own_name(
    monkeypatch: pytest.MonkeyPatch, own: str, expected: str
) -> None:
    monkeypatch.setenv("PREFECT__RUNTIME__DEPLOYMENT__NAME", own)
    monkeypatch.setenv("PREFECT__RUNTIME__FLOW_RUN__FLOW_NAME", "batchline-pipeline")
    assert deployment.name == own and flow_run.flow_name == "batchline-pipeline"
    assert sibling_deployment(CHECK_FLOW) == expected


def test_a_deployment_named_otherwise_is_refused_rather_than_guessed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PREFECT__RUNTIME__DEPLOYMENT__NAME", "nightly")
    monkeypatch.setenv("PREFECT__RUNTIME__FLOW_RUN__FLOW_NAME", "batchline-pipeline")
    with pytest.raises(RuntimeError, match="not named <prefix>batchline-pipeline"):
        sibling_deployment(CHECK_FLOW)
