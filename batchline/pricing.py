"""Cost of usage at batch and standard prices, from the price table in ``data/prices.json``."""

from __future__ import annotations

import json
import re
from functools import lru_cache
from importlib import resources
from typing import TypeVar

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, Field

# claude-haiku-4-5-20251001, claude-3-5-haiku-latest: the same model as the id before the suffix.
_SNAPSHOT_SUFFIX = re.compile(r"(.+)-(?:\d{8}|latest)")
_PRICES = "data/prices.json"
# A result's usage, as its columns in collected and results tables (batchline/schemas.py).
USAGE_COLUMNS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "cache_creation_1h_input_tokens",
)


class ModelPrice(BaseModel):
    """A model's standard (non-batch) prices in USD per million tokens."""

    input: float = Field(ge=0, description="Input tokens.")
    output: float = Field(ge=0, description="Output tokens.")
    # Where a model's page lists cache rates other than the table's multipliers of its input.
    cache_write_5m: float | None = Field(None, ge=0, description="5-minute cache writes.")
    cache_write_1h: float | None = Field(None, ge=0, description="1-hour cache writes.")
    cache_read: float | None = Field(None, ge=0, description="Cache hits.")


class PriceTable(BaseModel):
    batch_discount: float = Field(gt=0, le=1)
    cache_write_5m_multiplier: float = Field(ge=0, description="Of input, 5-minute cache writes.")
    cache_write_1h_multiplier: float = Field(ge=0, description="Of input, 1-hour cache writes.")
    cache_read_multiplier: float = Field(ge=0, description="Of input, unless a model has its own.")
    models: dict[str, ModelPrice]

    def for_model(self, model: str) -> ModelPrice | None:
        """The listed id, or its dated snapshot or -latest alias; None if not listed.

        Only those suffixes: matching any longer id by prefix priced claude-opus-4-6 as
        claude-opus-4, and a silently wrong cost is worse than none (a null cost is warned about,
        and a budget with an unpriced model is refused).
        """
        snapshot = _SNAPSHOT_SUFFIX.fullmatch(model)
        return self.models.get(model) or (self.models.get(snapshot[1]) if snapshot else None)


class Usage(BaseModel):
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_1h_input_tokens: int = Field(
        0, description="The part of cache_creation_input_tokens written for an hour."
    )


def prices_file() -> str:
    """Where the price table is, for messages asking to add a price to it."""
    return str(resources.files("batchline").joinpath(_PRICES))


@lru_cache(maxsize=1)
def price_table() -> PriceTable:
    """The packaged price table."""
    raw = resources.files("batchline").joinpath(_PRICES).read_text("utf-8")
    data = {k: v for k, v in json.loads(raw).items() if not k.startswith("_")}
    return PriceTable.model_validate(data)


Tokens = TypeVar("Tokens", float, "npt.NDArray[np.float64]")


def usage_cost(
    price: ModelPrice,
    input_tokens: Tokens,
    output_tokens: Tokens,
    cache_creation_input_tokens: Tokens,
    cache_read_input_tokens: Tokens,
    cache_creation_1h_input_tokens: Tokens,
    *,
    batch: bool = True,
) -> Tokens:
    """USD for token counts: scalars for one request, numpy arrays for a table of them.

    Cache writes are 5-minute ones except the part the usage reports as 1-hour writes, which cost
    more (2x input against 1.25x).
    """
    table = price_table()

    def rate(own: float | None, multiplier: float) -> float:
        return own if own is not None else price.input * multiplier

    written_5m = cache_creation_input_tokens - cache_creation_1h_input_tokens
    total = (
        price.input * input_tokens
        + rate(price.cache_write_5m, table.cache_write_5m_multiplier) * written_5m
        + rate(price.cache_write_1h, table.cache_write_1h_multiplier)
        * cache_creation_1h_input_tokens
        + rate(price.cache_read, table.cache_read_multiplier) * cache_read_input_tokens
        + price.output * output_tokens
    ) / 1_000_000
    return total * table.batch_discount if batch else total


def cost_usd(model: str, usage: Usage, *, batch: bool = True) -> float | None:
    """What ``usage`` costs, or None when the model has no price (the caller warns)."""
    price = price_table().for_model(model)
    if price is None:
        return None
    return usage_cost(
        price,
        float(usage.input_tokens),
        float(usage.output_tokens),
        float(usage.cache_creation_input_tokens),
        float(usage.cache_read_input_tokens),
        float(usage.cache_creation_1h_input_tokens),
        batch=batch,
    )


def row_costs(rows: pa.Table, unpriced: set[str]) -> pa.Array:
    """cost_usd of each row: its usage at batch prices; 0 unless billed; null if unpriced."""
    # An invalid_output reply was generated, so it is paid for like a succeeded one.
    succeeded = pc.is_in(rows.column("status"), pa.array(["succeeded", "invalid_output"])).to_numpy(
        zero_copy_only=False
    )
    models = rows.column("model").to_numpy(zero_copy_only=False)
    tokens = {
        c: pc.fill_null(rows.column(c), 0).to_numpy().astype(np.float64) for c in USAGE_COLUMNS
    }
    costs = np.zeros(rows.num_rows)
    unknown = np.zeros(rows.num_rows, dtype=bool)
    for model in set(models[succeeded]):
        mine = succeeded & (models == model)
        price = price_table().for_model(model)
        if price is None:
            unpriced.add(model)
            unknown |= mine
            continue
        costs[mine] = usage_cost(price, *(tokens[c][mine] for c in USAGE_COLUMNS))
    return pa.array(costs, pa.float64(), mask=unknown)
