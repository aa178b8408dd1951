"""Fixtures for the emulator tests: quick emulator defaults and SDK clients for them."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anthropic
import pytest

from batchline.emulator import Emulator

ClientFactory = Callable[..., anthropic.Anthropic]
RequestsFactory = Callable[..., list[dict[str, Any]]]
WaitEnded = Callable[..., Any]


@pytest.fixture(autouse=True)
def _fast_sdk_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the SDK's own retry backoff (used when no retry-after is sent) in milliseconds."""
    monkeypatch.setattr(anthropic._base_client, "INITIAL_RETRY_DELAY", 0.001)
    monkeypatch.setattr(anthropic._base_client, "MAX_RETRY_DELAY", 0.01)


@pytest.fixture
def emulator_defaults() -> dict[str, Any]:
    """Quicker batches and cancels than the suite's default: these tests wait on many of them."""
    return {"processing_seconds": 0.1, "cancel_seconds": 0.05}


@pytest.fixture
def client() -> ClientFactory:
    """`client(emu, max_retries=2)`: the official SDK pointed at an emulator."""

    def make(emu: Emulator, max_retries: int = 2, **options: Any) -> anthropic.Anthropic:
        return anthropic.Anthropic(
            api_key="test-key", base_url=emu.base_url, max_retries=max_retries, **options
        )

    return make


@pytest.fixture
def make_requests() -> RequestsFactory:
    """`make_requests(n, prefix="req", **params)`: n valid batch requests with distinct prompts."""

    def make(count: int, prefix: str = "req", **params: Any) -> list[dict[str, Any]]:
        return [
            {
                "custom_id": f"{prefix}-{index}",
                "params": {
                    "model": "claude-sonnet-4-5",
                    "max_tokens": 256,
                    "messages": [{"role": "user", "content": f"Document {index}: some text."}],
                    **params,
                },
            }
            for index in range(count)
        ]

    return make


@pytest.fixture
def wait_ended() -> WaitEnded:
    """`wait_ended(batches, batch_id)`: poll until the batch has ended, return it."""

    def wait(batches: Any, batch_id: str, timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            batch = batches.retrieve(batch_id)
            if batch.processing_status == "ended":
                return batch
            if time.monotonic() > deadline:
                raise AssertionError(f"batch {batch_id} still {batch.processing_status}")
            time.sleep(0.02)

    return wait
