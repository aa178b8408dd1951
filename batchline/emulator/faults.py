"""Which requests and which calls fail: seeded draws, so every run of a scenario is the same."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, TypeVar

from batchline.emulator import seeding
from batchline.emulator.config import HTTP_FAULT_TYPES, EmulatorConfig, OutputFault
from batchline.emulator.errors import ApiError

K = TypeVar("K", bound=str | int)  # an error type, a fault kind, an HTTP status

_REQUEST_ERROR_MESSAGES: Final = {
    "invalid_request_error": "Invalid request (emulated fault).",
    "authentication_error": "API key is invalid.",
    "billing_error": "Your credit balance is too low to access the Anthropic API.",
    "permission_error": "Your API key does not have permission to use the specified resource.",
    "not_found_error": "Not found.",
    "rate_limit_error": "This request would exceed your organization's rate limit.",
    "timeout_error": "Request timed out.",
    "api_error": "Internal server error",
    "overloaded_error": "Overloaded",
}

_HTTP_MESSAGES: Final = {
    429: "Number of requests has exceeded your rate limit (emulated fault).",
    500: "Internal server error",
    529: "Overloaded",
}


def request_fault(config: EmulatorConfig, batch_id: str, custom_id: str) -> str | None:
    """The error type a processed request fails with, "expired", or None if it goes through.

    A function of (seed, batch id, custom_id) only, so a request resubmitted in a new batch gets
    a fresh draw while a replay of the same scenario gets the same one.
    """
    draw = seeding.unit(config.seed, "request-fault", batch_id, custom_id)
    # Expiry's slice comes after every error type's, as the rates are documented.
    rates: dict[str, float] = {**config.error_rates}
    error_type = _pick(draw, rates)
    if error_type is None and draw < sum(r for _, r in sorted(rates.items())) + config.expire_rate:
        return "expired"
    return error_type


def output_fault(config: EmulatorConfig, batch_id: str, custom_id: str) -> OutputFault | None:
    """How a structured-output reply is spoiled, if it is; drawn like ``request_fault``."""
    return _pick(
        seeding.unit(config.seed, "output-fault", batch_id, custom_id), config.output_fault_rates
    )


def request_error_message(error_type: str) -> str:
    """The message an injected per-request error carries."""
    return _REQUEST_ERROR_MESSAGES[error_type]


def http_fault(config: EmulatorConfig, call_number: int) -> ApiError | None:
    """The error that answers the `call_number`-th /v1 call, or None."""
    status = _pick(seeding.unit(config.seed, "http-fault", call_number), config.http_error_rates)
    if status is None:
        return None
    headers = {"retry-after": f"{config.retry_after_seconds:g}"} if status == 429 else {}
    return ApiError(status, HTTP_FAULT_TYPES[status], _HTTP_MESSAGES[status], headers=headers)


def outage() -> ApiError:
    """The answer to every /v1 call while the emulated API is down."""
    return ApiError(500, HTTP_FAULT_TYPES[500], _HTTP_MESSAGES[500])


def _pick(draw: float, rates: Mapping[K, float]) -> K | None:
    """The key whose slice of [0, 1) holds ``draw``, the slices laid end to end in key order."""
    threshold = 0.0
    for key, rate in sorted(rates.items()):
        threshold += rate
        if draw < threshold:
            return key
    return None
