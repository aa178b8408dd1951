"""Shared fixtures: one Prefect test server per session, emulators on real loopback sockets."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from batchline.emulator import Emulator, EmulatorConfig

TEST_API_KEY = "sk-ant-test-0123456789-not-a-real-key"


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
