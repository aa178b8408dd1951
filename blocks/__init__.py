"""Prefect blocks of batchline: register them with `prefect block register -m blocks`."""

from blocks.credentials import AnthropicCredentials
from blocks.job import BatchJob

__all__ = ["AnthropicCredentials", "BatchJob"]
