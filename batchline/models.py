"""The models a run asks for, as the Models API describes them: limits and whether they can be used.

Limits (``max_tokens``, the input context) and capabilities come from ``client.models.retrieve``
rather than from a table copied into this project, so a new model or a raised limit needs no
release of batchline. Each distinct model of a run is looked up once, before anything is paid.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import anthropic
import orjson
from anthropic.types import ModelInfo
from pydantic import BaseModel, ConfigDict, Field

from batchline.config import ConfigError, JobConfig


class ModelLimits(BaseModel):
    """What a run needs to know of one model; ``problem`` says why it cannot be used, if so."""

    model_config = ConfigDict(frozen=True)

    model: str = Field(description="The id as the run names it (an alias or a dated snapshot).")
    max_input_tokens: int | None = Field(None, description="Input context; None: not reported.")
    max_tokens: int | None = Field(None, description="Largest max_tokens; None: not reported.")
    problem: str | None = None


class ModelTable(BaseModel):
    """Every model a run asks for, by the id the run names it with."""

    models: dict[str, ModelLimits] = Field(default_factory=dict)

    def get(self, model: str) -> ModelLimits:
        """The model's limits; KeyError if it was never looked up."""
        return self.models[model]

    def fingerprint(self) -> str:
        """A hash of the limits, for the keys of the steps that check requests against them."""
        dumped = {k: v.model_dump() for k, v in self.models.items()}
        return hashlib.sha256(orjson.dumps(dumped, option=orjson.OPT_SORT_KEYS)).hexdigest()


def limits_of(model: str, info: ModelInfo | None, *, structured: bool) -> ModelLimits:
    """A Models API answer (None for a 404) as limits, with the reason a run cannot use it."""
    if info is None:
        return ModelLimits(model=model, problem="is unknown to the Models API")
    capabilities = info.capabilities
    problem = None
    # A capability the API does not report is left to the API to refuse: only a reported
    # "unsupported" is held against the model.
    if info.lifecycle == "retired":
        problem = "is retired"
    elif capabilities is not None and not capabilities.batch.supported:
        problem = "does not support the Message Batches API"
    elif structured and capabilities is not None and not capabilities.structured_outputs.supported:
        problem = "does not support structured outputs"
    return ModelLimits(
        model=model,
        max_input_tokens=info.max_input_tokens,
        max_tokens=info.max_tokens,
        problem=problem,
    )


def look_up(
    client: anthropic.Anthropic,
    models: Iterable[str],
    *,
    structured: bool = False,
    known: ModelTable | None = None,
) -> ModelTable:
    """``known`` plus each model of ``models`` it lacks, retrieved once from the Models API."""
    found = dict(known.models) if known else {}
    for model in sorted(set(models) - set(found)):
        try:
            info: ModelInfo | None = client.models.retrieve(model)
        except anthropic.NotFoundError:
            info = None
        found[model] = limits_of(model, info, structured=structured)
    return ModelTable(models=found)


def require_usable(table: ModelTable, job: JobConfig) -> ModelLimits:
    """The run's own model, or a ConfigError naming it (and its limit) before anything is paid."""
    limits = table.get(job.model)
    if limits.problem is not None:
        raise ConfigError(f"model {job.model!r} {limits.problem}: nothing was submitted")
    if limits.max_tokens is not None and job.max_tokens > limits.max_tokens:
        raise ConfigError(
            f"max_tokens {job.max_tokens} is over {job.model}'s output limit of "
            f"{limits.max_tokens} tokens (Models API): every request would come back errored"
        )
    return limits


def check_run_model(client: anthropic.Anthropic, job: JobConfig) -> ModelTable:
    """Look the run's model up and refuse it now if no request of it could succeed."""
    table = look_up(client, [job.model], structured=job.output_schema is not None)
    require_usable(table, job)
    return table
