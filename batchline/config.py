"""Typed, bounded settings for one pipeline run.

Secrets never live here: the API key comes from the environment or a credentials block, so a
JobConfig can be logged, hashed into cache keys and stored as a Prefect parameter safely.
"""

from __future__ import annotations

import hashlib
import string
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

# The Message Batches API's own limits (anthropic/types/messages/batch_create_params.py docs).
MAX_REQUESTS_PER_BATCH = 100_000
# "256 MB" read as decimal, the stricter reading, as the emulator reads it: a batch cut at 256 MiB
# (268,435,456 bytes) was refused whole with a 413, and the run with it.
MAX_BATCH_BYTES = 256_000_000

DEFAULT_MODEL = "claude-haiku-4-5"
# JobConfig fields naming the columns whose values override the run's own, row by row.
ROW_COLUMNS = ("model_column", "max_tokens_column", "system_column", "temperature_column")


class ConfigError(ValueError):
    """A setting or an input location is unusable; raised before anything is spent."""


class RunError(RuntimeError):
    """A run stopped partway; the message names the cause. What was paid for is in the ledger."""


class SourceOptions(BaseModel):
    """How documents are read from the source."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id_column: str = Field("id", description="Column holding the document id in tabular sources.")
    text_column: str = Field("text", description="Column holding the document text.")
    max_document_bytes: int = Field(
        2_000_000,
        ge=1,
        le=MAX_BATCH_BYTES // 2,
        description="Documents larger than this become invalid rows instead of requests.",
    )
    shard_size: int = Field(
        10_000,
        ge=1,
        le=MAX_REQUESTS_PER_BATCH,
        description="Documents per shard; bounds the memory of load and build.",
    )


class RetryPolicy(BaseModel):
    """Which ended requests a run submits again, and how often in all."""

    model_config = ConfigDict(frozen=True)

    max_attempts: int = 3
    # A reply that did not parse or match the output schema was paid for and may fail again.
    retry_invalid_output: bool = False
    # A canceled request was stopped on purpose (batchline cancel); resubmitted only when asked.
    retry_canceled: bool = False

    def fingerprint(self) -> str:
        """The policy as a short string: the request index recomputes kinds when it changes."""
        return f"{self.max_attempts}:{int(self.retry_invalid_output)}:{int(self.retry_canceled)}"


class JobConfig(BaseModel):
    """What to ask the model for each document, and how hard to try."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(DEFAULT_MODEL, min_length=1, description="Anthropic model id.")
    max_tokens: int = Field(
        1024, ge=1, description="max_tokens of every request; the model's limit is the API's."
    )
    template: str = Field(
        "{text}", min_length=1, description="Format string over the document: the user message."
    )
    system: str | None = Field(
        None, description="System prompt, sent with cache_control so it is cached across requests."
    )
    temperature: float | None = Field(None, ge=0.0, le=1.0)
    output_schema: dict[str, Any] | None = Field(
        None,
        description="JSON Schema of an object every reply must match; its top-level fields become "
        "typed results columns. Sent API-ready as output_config.format.",
    )
    retry_invalid_output: bool = Field(
        False, description="Resubmit replies that did not parse or match output_schema."
    )
    retry_canceled: bool = Field(
        False, description="Resubmit requests a cancel stopped (batchline cancel)."
    )
    model_column: str = Field(
        "model", min_length=1, description="Column of tabular sources overriding a row's model."
    )
    max_tokens_column: str = Field(
        "max_tokens", min_length=1, description="Column overriding a row's max_tokens."
    )
    system_column: str = Field(
        "system", min_length=1, description="Column overriding a row's system prompt."
    )
    temperature_column: str = Field(
        "temperature", min_length=1, description="Column overriding a row's temperature."
    )
    max_attempts: int = Field(
        3, ge=1, le=10, description="Submissions per request, counting the first one."
    )
    poll_interval: float = Field(
        10.0, gt=0, le=3600, description="Shortest wait between status polls, in seconds."
    )
    max_poll_interval: float = Field(
        300.0, gt=0, le=3600, description="Longest wait between status polls, in seconds."
    )
    max_cost_usd: float | None = Field(
        None, ge=0, description="Refuse to submit when the worst-case estimate exceeds this."
    )
    max_batches_in_flight: int = Field(
        2,
        ge=1,
        le=100,
        description="Batches submitted but not yet collected, at most. The API queues 100k "
        "(tier 1) to 500k (tier 4) requests per organisation: 2 full batches fit tiers 2 to 4.",
    )
    max_requests_per_batch: int = Field(MAX_REQUESTS_PER_BATCH, ge=1, le=MAX_REQUESTS_PER_BATCH)
    max_batch_bytes: int = Field(MAX_BATCH_BYTES, ge=1024, le=MAX_BATCH_BYTES)

    @field_validator("template")
    @classmethod
    def _template_parses(cls, value: str) -> str:
        try:
            fields = [name for _, name, _, _ in string.Formatter().parse(value) if name is not None]
        except ValueError as exc:
            raise ValueError(f"template {value!r} is not a valid format string: {exc}") from exc
        if any(name == "" or name.isdigit() for name in fields):
            raise ValueError(f"template {value!r} must name its fields, like {{text}}")
        return value

    @field_validator("output_schema")
    @classmethod
    def _output_schema_usable(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        # Imported here: batchline.structured raises this module's ConfigError.
        from batchline.structured import check_output_schema

        return None if value is None else check_output_schema(value)

    def template_fields(self) -> set[str]:
        """The document fields the template refers to."""
        return {
            name.split(".")[0].split("[")[0]
            for _, name, _, _ in string.Formatter().parse(self.template)
            if name
        }

    def retry_policy(self) -> RetryPolicy:
        """Which ended requests this job submits again."""
        return RetryPolicy(
            max_attempts=self.max_attempts,
            retry_invalid_output=self.retry_invalid_output,
            retry_canceled=self.retry_canceled,
        )

    def request_fingerprint(self) -> str:
        """Hash of everything that shapes a request's params (not polling or budget)."""
        relevant = self.model_dump(
            include={"model", "max_tokens", "template", "system", "temperature", *ROW_COLUMNS}
        )
        if self.output_schema is not None:
            # Only when set, so the fingerprints of runs without a schema stay as they were.
            relevant["output_schema"] = self.output_schema
        return hashlib.sha256(orjson.dumps(relevant, option=orjson.OPT_SORT_KEYS)).hexdigest()
