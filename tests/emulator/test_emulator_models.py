"""The Models API through the official SDK: listing, lookups, limits and capabilities."""

from __future__ import annotations

from typing import Any

import anthropic
import pytest

from batchline.config import ConfigError, JobConfig
from batchline.emulator.models import EmulatedModel
from batchline.models import check_run_model, look_up

CATALOGUE = (
    EmulatedModel(id="claude-new", display_name="New", created_at="2026-10-01T00:00:00Z"),
    EmulatedModel(
        id="claude-mid",
        display_name="Mid",
        aliases=("claude-mid-20260501",),
        created_at="2026-05-01T00:00:00Z",
        max_input_tokens=1_000_000,
        max_tokens=128_000,
        structured_outputs=False,
    ),
    EmulatedModel(
        id="claude-nobatch", display_name="No batch", created_at="2026-03-01T00:00:00Z", batch=False
    ),
    EmulatedModel(
        id="claude-old",
        display_name="Old",
        created_at="2024-01-01T00:00:00Z",
        lifecycle="retired",
    ),
)


@pytest.fixture
def sdk(emulator_factory: Any, client: Any) -> anthropic.Anthropic:
    sdk: anthropic.Anthropic = client(emulator_factory(models=CATALOGUE))
    return sdk


def test_retrieve_gives_limits_and_capabilities_by_id_or_alias(sdk: anthropic.Anthropic) -> None:
    model = sdk.models.retrieve("claude-mid-20260501")
    assert (model.id, model.display_name, model.lifecycle) == ("claude-mid", "Mid", "active")
    assert (model.max_input_tokens, model.max_tokens) == (1_000_000, 128_000)
    assert model.capabilities is not None
    assert model.capabilities.batch.supported
    assert not model.capabilities.structured_outputs.supported
    with pytest.raises(anthropic.NotFoundError):
        sdk.models.retrieve("claude-unheard-of")


def test_list_is_newest_first_pages_and_shows_retired_only_when_asked(
    sdk: anthropic.Anthropic,
) -> None:
    assert [m.id for m in sdk.models.list()] == ["claude-new", "claude-mid", "claude-nobatch"]
    first = sdk.models.list(limit=2)
    assert [m.id for m in first.data] == ["claude-new", "claude-mid"] and first.has_more
    # The SDK's auto-pagination follows last_id with after_id.
    assert [m.id for m in sdk.models.list(limit=1)] == [
        "claude-new",
        "claude-mid",
        "claude-nobatch",
    ]
    retired = sdk.models.list(lifecycle=["retired"])
    assert [m.id for m in retired] == ["claude-old"]


def test_each_model_is_looked_up_once_and_unusable_ones_say_why(sdk: anthropic.Anthropic) -> None:
    table = look_up(
        sdk, ["claude-new", "claude-old", "claude-nobatch", "claude-gone", "claude-new"]
    )
    problems = {m: limits.problem for m, limits in table.models.items()}
    assert problems == {
        "claude-new": None,
        "claude-old": "is retired",
        "claude-nobatch": "does not support the Message Batches API",
        "claude-gone": "is unknown to the Models API",
    }
    assert table.models["claude-new"].max_tokens == 64_000
    structured = look_up(sdk, ["claude-mid"], structured=True)
    assert structured.models["claude-mid"].problem == "does not support structured outputs"
    assert look_up(sdk, ["claude-mid"]).models["claude-mid"].problem is None


@pytest.mark.parametrize(
    ("model", "max_tokens", "message"),
    [
        ("claude-gone", 10, "model 'claude-gone' is unknown to the Models API"),
        ("claude-old", 10, "model 'claude-old' is retired"),
        ("claude-nobatch", 10, "model 'claude-nobatch' does not support the Message Batches API"),
        ("claude-new", 64_001, "max_tokens 64001 is over claude-new's output limit of 64000"),
    ],
)
def test_a_run_on_an_unusable_model_is_refused_naming_it(
    sdk: anthropic.Anthropic, model: str, max_tokens: int, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        check_run_model(sdk, JobConfig(model=model, max_tokens=max_tokens))


def test_requests_are_held_to_their_models_limits(
    emulator_factory: Any, client: Any, make_requests: Any, wait_ended: Any
) -> None:
    sdk = client(emulator_factory(models=CATALOGUE))
    requests = [
        *make_requests(1, "mid", model="claude-mid", max_tokens=100_000),
        *make_requests(1, "new", model="claude-new", max_tokens=100_000),
        *make_requests(1, "old", model="claude-old"),
    ]
    batch = sdk.messages.batches.create(requests=requests)
    wait_ended(sdk.messages.batches, batch.id)
    results = {r.custom_id: r.result for r in sdk.messages.batches.results(batch.id)}
    assert results["mid-0"].type == "succeeded"
    assert results["new-0"].type == "errored"
    assert "max_tokens: 100000 > 64000" in results["new-0"].error.error.message  # type: ignore[union-attr]
    assert results["old-0"].type == "errored"
    assert results["old-0"].error.error.type == "not_found_error"  # type: ignore[union-attr]
