"""Build the official SDK client the usual way, so ANTHROPIC_API_KEY and ANTHROPIC_BASE_URL work."""

from __future__ import annotations

import os

import anthropic

from batchline.config import ConfigError


def require_api_key(api_key: str | None = None) -> str:
    """The API key to use, or a ConfigError said before anything is loaded or spent."""
    key = api_key or os.environ.get("ANTHROPIC_API_KEY")
    if not key:
        raise ConfigError(
            "no Anthropic API key: set ANTHROPIC_API_KEY or save an AnthropicCredentials block "
            "and pass its name (the key is never taken as a parameter)"
        )
    return key


def make_client(
    api_key: str | None = None, base_url: str | None = None, max_retries: int = 5
) -> anthropic.Anthropic:
    """An SDK client; None means the SDK's own environment lookup (ANTHROPIC_BASE_URL...)."""
    return anthropic.Anthropic(
        api_key=require_api_key(api_key), base_url=base_url, max_retries=max_retries
    )
