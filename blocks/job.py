"""A saved job definition (model, prompt, limits), reusable across deployments."""

from __future__ import annotations

from typing import Any

from prefect.blocks.core import Block
from pydantic import Field

from batchline.config import DEFAULT_MODEL, JobConfig
from batchline.structured import load_output_schema

_JOB_FIELDS = {"model", "max_tokens", "template", "system", "max_attempts"}


class BatchJob(Block):
    """What to ask for each document; a pipeline given this block ignores its own job parameters."""

    _block_type_name = "Batchline Job"
    _block_type_slug = "batchline-job"
    _description = "Model, prompt template, system prompt and limits of a batchline pipeline."

    model: str = Field(DEFAULT_MODEL, description="Anthropic model id.")
    max_tokens: int = Field(1024, ge=1, description="max_tokens of every request.")
    template: str = Field("{text}", description="Format string over the document fields.")
    system: str | None = Field(None, description="System prompt (cached across requests).")
    max_attempts: int = Field(3, ge=1, le=10, description="Submissions per request at most.")
    output_schema: dict[str, Any] | None = Field(
        None, description="JSON Schema every reply must match; its fields become typed columns."
    )
    output_model: str | None = Field(
        None, description="Or a Pydantic model giving that schema: package.module:Model."
    )

    def job_config(self, **overrides: object) -> JobConfig:
        """A JobConfig from this block, with run-time settings such as polling added."""
        fields = self.model_dump(include=_JOB_FIELDS)
        fields["output_schema"] = load_output_schema(self.output_schema, self.output_model)
        return JobConfig.model_validate({**fields, **overrides})
