from __future__ import annotations

import pytest

from batchline.pricing import Usage, cost_usd, price_table


def test_batch_price_is_half_the_standard_price() -> None:
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    assert cost_usd("claude-haiku-4-5", usage, batch=False) == pytest.approx(6.0)
    assert cost_usd("claude-haiku-4-5", usage) == pytest.approx(3.0)


def test_cache_multipliers_stack_on_the_batch_discount() -> None:
    usage = Usage(cache_creation_input_tokens=1_000_000, cache_read_input_tokens=1_000_000)
    # sonnet input $3/M: write 1.25x, read 0.1x, then the 50% batch discount
    assert cost_usd("claude-sonnet-4-5", usage) == pytest.approx((3.75 + 0.3) / 2)


def test_dated_model_ids_match_their_family_and_unknown_models_have_no_price() -> None:
    table = price_table()
    assert table.for_model("claude-haiku-4-5-20251001") == table.models["claude-haiku-4-5"]
    assert table.for_model("claude-sonnet-4-5-20250929") == table.models["claude-sonnet-4-5"]
    assert table.for_model("claude-3-5-haiku-latest") == table.models["claude-3-5-haiku"]
    assert cost_usd("gpt-nothing", Usage(input_tokens=10)) is None
    # A newer model is not its older family's price: unknown, so warned about, never guessed.
    assert table.for_model("claude-opus-4-6") is None
    assert table.for_model("claude-opus-4-5-preview") is None
