from __future__ import annotations

import json
import typing
from importlib import resources

import pyarrow as pa
import pytest
from anthropic.types import ModelParam

from batchline.pricing import Usage, cost_usd, price_table, row_costs


def test_batch_price_is_half_the_standard_price() -> None:
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    assert cost_usd("claude-haiku-4-5", usage, batch=False) == pytest.approx(6.0)
    assert cost_usd("claude-haiku-4-5", usage) == pytest.approx(3.0)


def test_cache_multipliers_stack_on_the_batch_discount() -> None:
    usage = Usage(cache_creation_input_tokens=1_000_000, cache_read_input_tokens=1_000_000)
    # sonnet input $3/M: 5-minute write 1.25x, read 0.1x, then the 50% batch discount
    assert cost_usd("claude-sonnet-4-5", usage) == pytest.approx((3.75 + 0.3) / 2)


def test_one_hour_cache_writes_cost_twice_the_input_price() -> None:
    # Of 1M tokens written, 400k were written for an hour (2x) and the rest for 5 minutes (1.25x).
    usage = Usage(cache_creation_input_tokens=1_000_000, cache_creation_1h_input_tokens=400_000)
    assert cost_usd("claude-opus-4-6", usage, batch=False) == pytest.approx(
        5.0 * (0.6 * 1.25 + 0.4 * 2)
    )


def test_a_models_own_cache_rates_replace_the_multipliers() -> None:
    reads = Usage(cache_read_input_tokens=1_000_000)
    assert cost_usd("claude-opus-5-5", reads, batch=False) == pytest.approx(0.20)  # 0.05x
    assert cost_usd("claude-fable-5-1", reads, batch=False) == pytest.approx(0.25)  # 0.025x
    writes = Usage(cache_creation_input_tokens=1_000_000)
    assert cost_usd("claude-3-haiku", writes, batch=False) == pytest.approx(0.30)


def test_newer_models_and_dated_snapshots_are_priced_from_their_own_entries() -> None:
    table = price_table()
    # claude-opus-4-6 is not claude-opus-4 ($15/$75): it has its own entry, $5/$25.
    assert table.for_model("claude-opus-4-6") == table.models["claude-opus-4-6"]
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    assert cost_usd("claude-opus-4-6", usage, batch=False) == pytest.approx(30.0)
    assert table.for_model("claude-haiku-4-5-20251001") == table.models["claude-haiku-4-5"]
    assert table.for_model("claude-opus-4-5-20251101") == table.models["claude-opus-4-5"]
    assert table.for_model("claude-3-5-haiku-latest") == table.models["claude-3-5-haiku"]


def test_unknown_models_have_no_price_never_a_guess() -> None:
    table = price_table()
    assert cost_usd("gpt-nothing", Usage(input_tokens=10)) is None
    assert table.for_model("claude-opus-4-9") is None
    assert table.for_model("claude-opus-4-5-preview") is None


def test_every_model_the_sdk_lists_is_priced_or_named_as_unpriced() -> None:
    listed = {m for m in typing.get_args(typing.get_args(ModelParam)[0])}
    raw = resources.files("batchline").joinpath("data/prices.json").read_text("utf-8")
    comment = json.loads(raw)["_comment"]
    table = price_table()
    unpriced = {m for m in listed if table.for_model(m) is None}
    assert unpriced == {
        "claude-haiku-5-5",
        "claude-sonnet-5-5",
        "claude-fable-5-2",
        "claude-mythos-5-1",
        "claude-mythos-5-2",
        "claude-mythos-preview",
    }
    assert all(m in comment for m in unpriced), "the file says which models it leaves out"


def test_each_row_is_costed_by_its_own_model_with_one_hour_writes_apart() -> None:
    rows = pa.table(
        {
            "status": ["succeeded", "succeeded", "succeeded", "errored"],
            "model": ["claude-opus-4-6", "claude-haiku-4-5-20251001", "claude-new-9", None],
            "input_tokens": [100, 100, 100, None],
            "output_tokens": [10, 10, 10, None],
            "cache_creation_input_tokens": [1000, 0, 0, None],
            "cache_read_input_tokens": [0, 500, 0, None],
            "cache_creation_1h_input_tokens": [600, 0, 0, None],
        }
    )
    unpriced: set[str] = set()
    costs = row_costs(rows, unpriced).to_pylist()
    opus = Usage(
        input_tokens=100,
        output_tokens=10,
        cache_creation_input_tokens=1000,
        cache_creation_1h_input_tokens=600,
    )
    assert costs[0] == pytest.approx(cost_usd("claude-opus-4-6", opus))
    # 400 five-minute writes at 1.25x and 600 one-hour writes at 2x of $5, halved for batches.
    assert costs[0] == pytest.approx((500 + 250 + 400 * 6.25 + 600 * 10) / 2e6)
    haiku = Usage(input_tokens=100, output_tokens=10, cache_read_input_tokens=500)
    assert costs[1] == pytest.approx(cost_usd("claude-haiku-4-5", haiku))
    assert costs[2] is None and unpriced == {"claude-new-9"}
    assert costs[3] == 0.0
