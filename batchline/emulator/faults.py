"""Which requests and which calls fail: seeded draws, so every run of a scenario is the same."""

from __future__ import annotations

from typing import Final

from batchline.emulator import seeding
from batchline.emulator.config import HTTP_FAULT_TYPES, EmulatorConfig, OutputFault
from batchline.emulator.errors import ApiError

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
    threshold = 0.0
    for error_type, rate in sorted(config.error_rates.items()):
        threshold += rate
        if draw < threshold:
            return error_type
    if draw < threshold + config.expire_rate:
        return "expired"
    return None


def output_fault(config: EmulatorConfig, batch_id: str, custom_id: str) -> OutputFault | None:
    """How a structured-output reply is spoiled, if it is; drawn like ``request_fault``."""
    draw = seeding.unit(config.seed, "output-fault", batch_id, custom_id)
    threshold = 0.0
    for fault, rate in sorted(config.output_fault_rates.items()):
        threshold += rate
        if draw < threshold:
            return fault
    return None


def request_error_message(error_type: str) -> str:
    """The message an injected per-request error carries."""
    return _REQUEST_ERROR_MESSAGES[error_type]


def http_fault(config: EmulatorConfig, call_number: int) -> ApiError | None:
    """The error that answers the `call_number`-th /v1 call, or None."""
    draw = seeding.unit(config.seed, "http-fault", call_number)
    threshold = 0.0
    for status, rate in sorted(config.http_error_rates.items()):
        threshold += rate
        if draw < threshold:
            headers = {}
            if status == 429:
                headers["retry-after"] = f"{config.retry_after_seconds:g}"
            return ApiError(
                status, HTTP_FAULT_TYPES[status], _HTTP_MESSAGES[status], headers=headers
            )
    return None


def outage() -> ApiError:
    """The answer to every /v1 call while the emulated API is down."""
    return ApiError(500, HTTP_FAULT_TYPES[500], _HTTP_MESSAGES[500])
