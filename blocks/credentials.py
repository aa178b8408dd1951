"""Anthropic credentials kept in a Prefect block, so the key is never a flow parameter."""

from __future__ import annotations

import anthropic
from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from batchline.client import make_client


class AnthropicCredentials(Block):
    """An Anthropic API key (stored encrypted by Prefect) and an optional base URL."""

    _block_type_name = "Anthropic Credentials"
    _block_type_slug = "anthropic-credentials"
    _description = "API key and base URL for Anthropic's Message Batches API."

    api_key: SecretStr = Field(description="Anthropic API key.")
    base_url: str | None = Field(
        None, description="API base URL; empty means the SDK default or ANTHROPIC_BASE_URL."
    )

    def get_client(self, max_retries: int = 5) -> anthropic.Anthropic:
        """The official SDK client for these credentials."""
        return make_client(self.api_key.get_secret_value(), self.base_url, max_retries)
