"""The explicit pyarrow schema of every Parquet file batchline writes.

Nested content (tool_use input, extra document columns, request params) is stored as JSON strings
so the schemas stay flat and stable whatever the documents or the model return.
The one exception is asked for: a run with an output schema gets its fields as typed columns
(structs and lists included) after the standard ones, from ``results``.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

# One staged, validated document; invalid_reason is set (and text may be null) for a bad one.
DOCUMENTS = pa.schema(
    [
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("text", pa.string()),
        pa.field("fields_json", pa.string()),
        pa.field("invalid_reason", pa.string()),
    ]
)

# A document that never became a request, with the reason.
INVALID = pa.schema(
    [
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
    ]
)

# The request manifest: every request's original params, so retries never need the source again.
MANIFEST = pa.schema(
    [
        pa.field("custom_id", pa.string(), nullable=False),
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("params_json", pa.string(), nullable=False),
        pa.field("params_hash", pa.string(), nullable=False),
        pa.field("request_bytes", pa.int64(), nullable=False),
        pa.field("estimated_input_tokens", pa.int64(), nullable=False),
        # The row's own model and max_tokens (a tabular source may set them per row): what its
        # worst-case cost is estimated from.
        pa.field("model", pa.string(), nullable=False),
        pa.field("max_tokens", pa.int64(), nullable=False),
    ]
)

# Which requests one ledger entry (one paid batch) holds.
LEDGER_REQUESTS = pa.schema(
    [
        pa.field("custom_id", pa.string(), nullable=False),
        pa.field("params_hash", pa.string(), nullable=False),
    ]
)

_RESULT_FIELDS = [
    pa.field("status", pa.string(), nullable=False),
    pa.field("text", pa.string()),
    pa.field("tool_use_json", pa.string()),
    pa.field("model", pa.string()),
    pa.field("stop_reason", pa.string()),
    pa.field("input_tokens", pa.int64()),
    pa.field("output_tokens", pa.int64()),
    pa.field("cache_creation_input_tokens", pa.int64()),
    pa.field("cache_read_input_tokens", pa.int64()),
    # The part of cache_creation_input_tokens written with a 1-hour TTL (priced apart).
    pa.field("cache_creation_1h_input_tokens", pa.int64()),
    pa.field("error_type", pa.string()),
    pa.field("error_message", pa.string()),
]

# One batch's results as downloaded, one row per result line.
COLLECTED = pa.schema(
    [
        pa.field("custom_id", pa.string(), nullable=False),
        pa.field("batch_id", pa.string(), nullable=False),
        *_RESULT_FIELDS,
    ]
)

# The final table: exactly one row per input document.
RESULTS = pa.schema(
    [
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("custom_id", pa.string()),
        *_RESULT_FIELDS,
        pa.field("cost_usd", pa.float64()),
        pa.field("attempts", pa.int32(), nullable=False),
        pa.field("batch_id", pa.string()),
    ]
)


def results(structured: pa.Schema | None = None) -> pa.Schema:
    """The final table's schema: RESULTS, then a run's typed structured-output columns if any."""
    return RESULTS if structured is None else pa.schema([*RESULTS, *structured])


def table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """Build a table of ``schema`` from row dicts (missing keys are null)."""
    return pa.Table.from_pylist(rows, schema=schema)
