"""The API's error envelope and the exception the handlers raise to send one."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error answer: HTTP status, the API's error type and a human-readable message."""

    def __init__(
        self,
        status: int,
        error_type: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.headers = headers or {}


def envelope(error_type: str, message: str, request_id: str | None) -> dict[str, Any]:
    """`{"type": "error", "error": {...}, "request_id": ...}` as the API sends it."""
    return {
        "type": "error",
        "error": {"type": error_type, "message": message},
        "request_id": request_id,
    }


def invalid_request(message: str) -> ApiError:
    """A 400 `invalid_request_error`."""
    return ApiError(400, "invalid_request_error", message)


def batch_not_found(batch_id: str) -> ApiError:
    """The real API's 404 for an id it does not know."""
    return ApiError(404, "not_found_error", f"Message Batch {batch_id} not found.")
