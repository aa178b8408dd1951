"""Every knob of the emulator, validated once so the server can trust it."""

from __future__ import annotations

from typing import Final, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from batchline.emulator.models import DEFAULT_MODELS, EmulatedModel

#: Error types a request may come back `errored` with (the API's documented `ErrorType`s that a
#: single Messages call can fail with).
REQUEST_ERROR_TYPES: Final = frozenset(
    {
        "invalid_request_error",
        "authentication_error",
        "billing_error",
        "permission_error",
        "not_found_error",
        "rate_limit_error",
        "timeout_error",
        "api_error",
        "overloaded_error",
    }
)

#: HTTP statuses the emulator can inject, with the error type the real API pairs with each.
HTTP_FAULT_TYPES: Final = {429: "rate_limit_error", 500: "api_error", 529: "overloaded_error"}

DAY: Final = 86_400.0

#: How a structured-output reply can be spoiled: cut short, or valid JSON that misses the schema.
OutputFault = Literal["truncated", "mismatched"]

_Key = TypeVar("_Key")


class EmulatorConfig(BaseModel):
    """Settings of one emulator: timing, limits, seed and the faults to inject."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    processing_seconds: float = Field(
        2.0, ge=0, le=30 * DAY, description="Seconds from create until a batch ends."
    )
    requests_per_second: float | None = Field(
        None,
        gt=0,
        description=(
            "If set, request i of a batch is processed (i+1)/rate seconds after create and a batch "
            "of n takes n/rate seconds, instead of processing_seconds; with a short expiry the "
            "requests not reached by expires_at come back `expired`."
        ),
    )
    expiry_seconds: float = Field(
        DAY, gt=0, le=30 * DAY, description="expires_at = created_at + this."
    )
    results_retention_seconds: float = Field(
        29 * DAY,
        gt=0,
        description=(
            "Results stay downloadable until created_at + this (the real API keeps them 29 days "
            "after creation); afterwards archived_at is set and the results URL answers 404."
        ),
    )
    cancel_seconds: float = Field(
        0.2, ge=0, le=DAY, description="Seconds a batch stays `canceling` before it ends."
    )
    seed: int = Field(0, description="Seed of every random choice (ids, faults).")
    error_rates: dict[str, float] = Field(
        default_factory=dict,
        description=(
            "Share of processed requests that come back `errored` with each error type, e.g. "
            '{"overloaded_error": 0.1}; drawn from (seed, batch id, custom_id).'
        ),
    )
    expire_rate: float = Field(
        0.0, ge=0, le=1, description="Share of processed requests that come back `expired`."
    )
    output_fault_rates: dict[OutputFault, float] = Field(
        default_factory=dict,
        description=(
            "Share of structured-output replies (requests with output_config.format) spoiled "
            'each way, e.g. {"truncated": 0.1, "mismatched": 0.05}: truncated JSON cut halfway '
            "with stop_reason max_tokens, or JSON whose first field has the wrong type; drawn "
            "from (seed, batch id, custom_id)."
        ),
    )
    http_error_rates: dict[int, float] = Field(
        default_factory=dict,
        description=(
            "Share of /v1 calls answered with each status (429, 500 or 529) before any side "
            "effect; drawn from (seed, call number)."
        ),
    )
    retry_after_seconds: float = Field(
        0.0, ge=0, le=3600, description="Value of the retry-after header sent with a 429."
    )
    lose_creates: int = Field(
        0,
        ge=0,
        description=(
            "The first N creates after start make their batch, then answer 500 as if the "
            "response had been lost, so a retrying client makes a second batch."
        ),
    )
    cut_results: int = Field(
        0,
        ge=0,
        description=(
            "The first N results downloads after start announce the full Content-Length but "
            "close the connection about halfway through the body."
        ),
    )
    results_outage_seconds: float = Field(
        0.0,
        ge=0,
        le=3600,
        description=(
            "The first results download after start finds the API down: it, and every /v1 call "
            "for this many seconds after it, is answered 500 before any side effect."
        ),
    )
    models: tuple[EmulatedModel, ...] = Field(
        DEFAULT_MODELS,
        description="The models GET /v1/models lists, with their limits and capabilities; a "
        "request naming another model (or a retired one) comes back errored, not_found_error.",
    )
    cache_min_tokens: int = Field(
        1024,
        ge=0,
        description="Shortest prefix (estimated tokens) that prompt caching will store.",
    )
    db_path: str | None = Field(
        None,
        description=(
            "SQLite file holding all state; None keeps it in a private temporary file that "
            "lives as long as the Emulator object."
        ),
    )
    host: str = Field("127.0.0.1", min_length=1, description="Address to listen on.")

    @field_validator("error_rates")
    @classmethod
    def _known_error_types(cls, rates: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(rates) - REQUEST_ERROR_TYPES)
        if unknown:
            raise ValueError(
                f"unknown error type(s) {unknown}; expected some of {sorted(REQUEST_ERROR_TYPES)}"
            )
        return _check_rates(rates)

    @field_validator("output_fault_rates")
    @classmethod
    def _output_rates_fit(cls, rates: dict[OutputFault, float]) -> dict[OutputFault, float]:
        return _check_rates(rates)

    @field_validator("http_error_rates")
    @classmethod
    def _known_statuses(cls, rates: dict[int, float]) -> dict[int, float]:
        unknown = sorted(set(rates) - set(HTTP_FAULT_TYPES))
        if unknown:
            raise ValueError(f"unsupported status(es) {unknown}; expected some of 429, 500, 529")
        return _check_rates(rates)

    @model_validator(mode="after")
    def _request_faults_fit(self) -> EmulatorConfig:
        if sum(self.error_rates.values()) + self.expire_rate > 1:
            raise ValueError("error_rates and expire_rate add up to more than 1")
        return self


def _check_rates(rates: dict[_Key, float]) -> dict[_Key, float]:
    """Reject rates outside [0, 1] and sets of rates that add up to more than 1."""
    for key, rate in rates.items():
        if not 0 <= rate <= 1:
            raise ValueError(f"rate for {key!r} must be between 0 and 1, got {rate}")
    if sum(rates.values()) > 1:
        raise ValueError("rates add up to more than 1")
    return rates
