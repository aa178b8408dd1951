from __future__ import annotations

import pyarrow as pa
import pytest

from batchline.pricing import Usage, cost_usd
from batchline.write import _costs


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
    costs = _costs(rows, unpriced).to_pylist()
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
