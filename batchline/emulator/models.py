"""The models the emulator knows, as `GET /v1/models` describes them: limits and capabilities.

The list is configurable (`EmulatorConfig.models`), so a test can add a model with no price, take
batch support away from one, or retire one. Requests naming a model the list does not hold, or a
retired one, come back `errored` with `not_found_error`, as the real API answers them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class EmulatedModel(BaseModel):
    """One model of the catalogue: what `GET /v1/models/{id}` reports about it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1)
    display_name: str = Field(min_length=1)
    aliases: tuple[str, ...] = Field((), description="Other ids it answers to (dated snapshots).")
    created_at: str = Field("2025-01-01T00:00:00Z", description="Release time, RFC 3339.")
    lifecycle: Literal["active", "deprecated", "retired"] = "active"
    max_input_tokens: int = Field(200_000, ge=1)
    max_tokens: int = Field(64_000, ge=1, description="Largest max_tokens a request may ask for.")
    batch: bool = Field(True, description="Whether the Message Batches API takes it.")
    structured_outputs: bool = True

    def answers_to(self, model_id: str) -> bool:
        """Whether a request or a lookup naming ``model_id`` means this model."""
        return model_id == self.id or model_id in self.aliases

    def info(self) -> dict[str, Any]:
        """The JSON of a ModelInfo, with every capability key present as the API sends them."""
        no = {"supported": False}
        return {
            "type": "model",
            "id": self.id,
            "display_name": self.display_name,
            "created_at": self.created_at,
            "lifecycle": self.lifecycle,
            "deprecated_at": None if self.lifecycle == "active" else self.created_at,
            "retires_at": None,
            "line": None,
            "max_input_tokens": self.max_input_tokens,
            "max_tokens": self.max_tokens,
            "capabilities": {
                "batch": {"supported": self.batch},
                "structured_outputs": {"supported": self.structured_outputs},
                "citations": no,
                "code_execution": no,
                "image_input": no,
                "pdf_input": no,
                "context_management": {"supported": False},
                "effort": {"supported": False, "low": no, "medium": no, "high": no, "max": no},
                "server_tools": {"supported": False, "code_execution": no, "web_search": no},
                "thinking": {
                    "supported": True,
                    "types": {
                        "adaptive": no,
                        "between_tools": no,
                        "disabled": {"supported": True},
                        "enabled": {"supported": True},
                    },
                },
            },
        }


def _model(model_id: str, name: str, context: int, output: int, *aliases: str) -> EmulatedModel:
    return EmulatedModel(
        id=model_id,
        display_name=name,
        aliases=aliases,
        max_input_tokens=context,
        max_tokens=output,
    )


# Limits as the models' pages on platform.claude.com state them (read 2026-11-29). The ids of
# the pinned SDK (anthropic/types/model_param.py) whose limits were not found there are left out.
DEFAULT_MODELS: tuple[EmulatedModel, ...] = (
    _model("claude-sonnet-5-5", "Claude Sonnet 5.5", 1_000_000, 128_000),
    _model("claude-haiku-5-5", "Claude Haiku 5.5", 1_000_000, 128_000),
    _model("claude-opus-5-5", "Claude Opus 5.5", 1_000_000, 128_000),
    _model("claude-fable-5-1", "Claude Fable 5.1", 1_000_000, 128_000),
    _model("claude-sonnet-5", "Claude Sonnet 5", 1_000_000, 128_000),
    _model("claude-fable-5", "Claude Fable 5", 1_000_000, 128_000),
    _model("claude-mythos-5", "Claude Mythos 5", 1_000_000, 128_000),
    _model("claude-opus-5", "Claude Opus 5", 1_000_000, 128_000),
    _model("claude-opus-4-8", "Claude Opus 4.8", 1_000_000, 128_000),
    _model("claude-opus-4-6", "Claude Opus 4.6", 1_000_000, 128_000),
    _model("claude-sonnet-4-6", "Claude Sonnet 4.6", 1_000_000, 128_000),
    _model("claude-opus-4-5", "Claude Opus 4.5", 200_000, 64_000, "claude-opus-4-5-20251101"),
    _model("claude-sonnet-4-5", "Claude Sonnet 4.5", 200_000, 64_000, "claude-sonnet-4-5-20250929"),
    _model("claude-haiku-4-5", "Claude Haiku 4.5", 200_000, 64_000, "claude-haiku-4-5-20251001"),
)


def find(models: tuple[EmulatedModel, ...], model_id: str) -> EmulatedModel | None:
    """The catalogue's model that ``model_id`` names, if any."""
    return next((m for m in models if m.answers_to(model_id)), None)
