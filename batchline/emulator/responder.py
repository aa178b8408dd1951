"""Turn one request's `params` into the Message the emulated model answers with.

Checking and rendering are separate steps: `check` rejects what the real API rejects per request
(those come back `errored` with `invalid_request_error`), and `render` builds a deterministic
Message whose text quotes the prompt (or, with `output_config.format`, is JSON of its schema), with
usage estimated at four characters per token and prompt caching applied to the prefixes marked
with `cache_control`.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, Final, Literal

import orjson
from anthropic.types import message_create_params
from anthropic.types.beta import message_create_params as beta_message_create_params

from batchline.emulator import models, values
from batchline.emulator.config import EmulatorConfig, OutputFault

QUOTE_CHARS: Final = 64
CHARS_PER_TOKEN: Final = 4
MAX_CACHE_BREAKPOINTS: Final = 4
_TTL_SECONDS: Final = {"5m": 300.0, "1h": 3600.0}

# The SDK's own parameter lists are the reference for what the API accepts, plus the sampling
# knobs this SDK version no longer lists; anything else is rejected like the real API does.
_KNOWN_PARAMS: Final = (
    frozenset(message_create_params.MessageCreateParamsBase.__annotations__)
    | frozenset(beta_message_create_params.MessageCreateParamsBase.__annotations__)
    | {"stream", "temperature", "top_p", "top_k"}
)

StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]


class InvalidParams(Exception):
    """What the API would answer this request with instead of a Message."""

    def __init__(self, message: str, error_type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message


@dataclass(frozen=True, slots=True)
class _Breakpoint:
    """End of a cacheable prefix: its cache key, its size in characters and its lifetime."""

    key: str
    chars: int
    ttl: str


@dataclass(frozen=True, slots=True)
class Prepared:
    """A request that passed `check`, with what `render` needs."""

    params: dict[str, Any]
    model: str
    max_tokens: int
    prompt_chars: int
    breakpoints: tuple[_Breakpoint, ...]
    forced_tool: dict[str, Any] | None
    thinking: bool
    output_schema: dict[str, Any] | None


class PromptCache:
    """Prefixes written by earlier requests: cache key -> time the entry expires."""

    def __init__(self, entries: dict[str, float] | None = None) -> None:
        self._entries = dict(entries or {})
        self._dirty: dict[str, float] = {}

    def fresh(self, key: str, now: float) -> bool:
        """Whether the prefix is cached and has not expired."""
        return self._entries.get(key, 0.0) > now

    def put(self, key: str, expires_at: float) -> None:
        """Write or refresh an entry (a cache hit extends its lifetime, as in the API)."""
        self._entries[key] = expires_at
        self._dirty[key] = expires_at

    def take_changes(self) -> dict[str, float]:
        """Entries changed since the last call, for the store to persist."""
        changes, self._dirty = self._dirty, {}
        return changes


def tokens(chars: int) -> int:
    """The emulator's token estimate: a token per four characters, rounded up."""
    return math.ceil(chars / CHARS_PER_TOKEN)


def check(params: dict[str, Any], config: EmulatorConfig) -> Prepared:
    """Validate params as the API does when it processes a batch request."""
    model = _required(params, "model", str, "a valid string")
    max_tokens = _required(params, "max_tokens", int, "a valid integer")
    messages = _required(params, "messages", list, "a valid list")
    for key in params:
        if key not in _KNOWN_PARAMS:
            raise InvalidParams(f"{key}: Extra inputs are not permitted")
    if params.get("stream") is True:
        raise InvalidParams('"stream=True" is not supported in the Message Batches API')
    if max_tokens < 1:
        raise InvalidParams("max_tokens: must be greater than or equal to 1")
    known = models.find(config.models, model)
    if known is None or known.lifecycle == "retired":
        raise InvalidParams(f"model: {model}", "not_found_error")
    if max_tokens > known.max_tokens:
        raise InvalidParams(
            f"max_tokens: {max_tokens} > {known.max_tokens}, which is the maximum "
            f"allowed number of output tokens for {model}"
        )
    if not messages:
        raise InvalidParams("messages: at least one message is required")
    _check_messages(messages)
    _check_system(params.get("system"))
    stop_sequences = params.get("stop_sequences", [])
    if not isinstance(stop_sequences, list) or not all(isinstance(s, str) for s in stop_sequences):
        raise InvalidParams("stop_sequences: Input should be a valid list of strings")
    tools = params.get("tools", [])
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise InvalidParams("tools: Input should be a valid list")
    for index, tool in enumerate(tools):
        if not isinstance(tool.get("name"), str):
            raise InvalidParams(f"tools.{index}.name: Field required")
        if tool.get("type", "custom") == "custom" and not isinstance(
            tool.get("input_schema"), dict
        ):
            raise InvalidParams(f"tools.{index}.custom.input_schema: Field required")
    forced_tool = _forced_tool(params.get("tool_choice"), tools)
    thinking = _check_thinking(params.get("thinking"), max_tokens, forced_tool)
    output_schema = _check_output_config(params.get("output_config"))
    prompt_chars, breakpoints = _prompt_layout(params, model, tools)
    if len(breakpoints) > MAX_CACHE_BREAKPOINTS:
        raise InvalidParams(
            f"A maximum of {MAX_CACHE_BREAKPOINTS} blocks with cache_control may be provided. "
            f"Found {len(breakpoints)}."
        )
    prompt_tokens = tokens(prompt_chars)
    if prompt_tokens > known.max_input_tokens:
        raise InvalidParams(
            f"prompt is too long: {prompt_tokens} tokens > {known.max_input_tokens} maximum"
        )
    return Prepared(
        params=params,
        model=model,
        max_tokens=max_tokens,
        prompt_chars=prompt_chars,
        breakpoints=breakpoints,
        forced_tool=forced_tool,
        thinking=thinking,
        output_schema=output_schema,
    )


def render(
    request: Prepared,
    *,
    message_id: str,
    tool_use_id: str,
    cache: PromptCache,
    cache_min_tokens: int,
    now: float,
    output_fault: OutputFault | None = None,
) -> dict[str, Any]:
    """The Message of a succeeded result; writes to or reads from the prompt cache.

    ``output_fault`` spoils a structured-output reply (see ``_structured_text``).
    """
    content: list[dict[str, Any]] = []
    if request.thinking:
        content.append(
            {
                "type": "thinking",
                "thinking": "Emulated thinking.",
                "signature": hashlib.sha256(message_id.encode()).hexdigest(),
            }
        )
    stop_sequence: str | None = None
    if request.forced_tool is not None:
        tool = request.forced_tool
        block = {
            "type": "tool_use",
            "id": tool_use_id,
            "name": tool["name"],
            "input": values.schema_value({"type": "object", **tool["input_schema"]}),
        }
        content.append(block)
        output_tokens = max(1, tokens(len(orjson.dumps(block))))
        stop_reason: StopReason = "tool_use"
        if output_tokens > request.max_tokens:
            output_tokens, stop_reason = request.max_tokens, "max_tokens"
    else:
        if request.output_schema is not None:
            text, stop_reason = _structured_text(request, request.output_schema, output_fault)
        else:
            text, stop_reason, stop_sequence = _reply_text(request)
        content.append({"type": "text", "text": text})
        output_tokens = min(max(1, tokens(len(text))), request.max_tokens)
        if stop_reason == "max_tokens":
            output_tokens = request.max_tokens
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": request.model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": _usage(request, output_tokens, cache, cache_min_tokens, now),
    }


def quoted_text(params: dict[str, Any]) -> str:
    """The text of the last user message: what the reply quotes."""
    for message in reversed(params["messages"]):
        if message.get("role") == "user":
            content = message["content"]
            if isinstance(content, str):
                return content
            return "\n".join(block["text"] for block in content if block.get("type") == "text")
    return ""


def _fingerprint(params: dict[str, Any]) -> str:
    """A hash of the params: the same request always gets the same reply."""
    return hashlib.sha256(orjson.dumps(params, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _structured_text(
    request: Prepared, schema: dict[str, Any], fault: OutputFault | None
) -> tuple[str, StopReason]:
    """JSON that matches ``schema``, with its choices drawn from the request's params.

    A ``truncated`` fault cuts it halfway, as a reply that ran out of ``max_tokens`` would be; a
    ``mismatched`` fault gives its first field ``[[]]``, which no scalar, object or flat-list
    field accepts, so the reply parses but does not validate. A reply longer than ``max_tokens``
    is cut there too.
    """
    value = values.schema_value(schema, values.seeded(_fingerprint(request.params)))
    if fault == "mismatched" and isinstance(value, dict) and schema.get("properties"):
        value[next(iter(schema["properties"]))] = [[]]
    text = orjson.dumps(value).decode()
    limit = request.max_tokens * CHARS_PER_TOKEN
    if fault == "truncated":
        limit = min(limit, len(text) // 2)
    if len(text) > limit:
        return text[:limit], "max_tokens"
    return text, "end_turn"


def _reply_text(request: Prepared) -> tuple[str, StopReason, str | None]:
    """The deterministic reply, cut where a stop sequence or max_tokens would cut it."""
    prompt = quoted_text(request.params)
    ellipsis = "…" if len(prompt) > QUOTE_CHARS else ""
    fingerprint = _fingerprint(request.params)[:12]
    text = f"Emulated reply to: {prompt[:QUOTE_CHARS]}{ellipsis} [{fingerprint}]"
    limit = request.max_tokens * CHARS_PER_TOKEN
    stops = [
        (text.find(seq), seq) for seq in request.params.get("stop_sequences", []) if seq in text
    ]
    if stops:
        position, sequence = min(stops)
        if position < limit:
            return text[:position], "stop_sequence", sequence
    if len(text) > limit:
        return text[:limit], "max_tokens", None
    return text, "end_turn", None


def _usage(
    request: Prepared, output_tokens: int, cache: PromptCache, min_tokens: int, now: float
) -> dict[str, Any]:
    """Token usage, with the cached prefix split into cache reads and cache writes."""
    eligible = [bp for bp in request.breakpoints if tokens(bp.chars) >= min_tokens]
    hit = next((bp for bp in reversed(eligible) if cache.fresh(bp.key, now)), None)
    read_chars = hit.chars if hit else 0
    written_chars = 0
    written_ttl = "5m"
    if hit is not None:
        cache.put(hit.key, now + _TTL_SECONDS[hit.ttl])
    if eligible and eligible[-1] is not hit:
        newer = eligible[eligible.index(hit) + 1 :] if hit else eligible
        for breakpoint in newer:
            cache.put(breakpoint.key, now + _TTL_SECONDS[breakpoint.ttl])
        written_chars = eligible[-1].chars - read_chars
        written_ttl = eligible[-1].ttl
    created = tokens(written_chars)
    return {
        "input_tokens": max(1, tokens(request.prompt_chars - read_chars - written_chars)),
        "cache_creation_input_tokens": created,
        "cache_read_input_tokens": tokens(read_chars),
        "cache_creation": {
            "ephemeral_5m_input_tokens": created if written_ttl == "5m" else 0,
            "ephemeral_1h_input_tokens": created if written_ttl == "1h" else 0,
        },
        "output_tokens": output_tokens,
        "service_tier": "batch",
        "inference_geo": "not_available",
    }


def _prompt_layout(
    params: dict[str, Any], model: str, tools: list[dict[str, Any]]
) -> tuple[int, tuple[_Breakpoint, ...]]:
    """Size of the prompt in characters, and the cache breakpoints along it.

    The prompt is read in the API's cache order: tools, then system, then messages. Each block
    with `cache_control` (and, with top-level `cache_control`, the last block) ends a prefix whose
    key hashes the model and every block up to it.
    """
    segments: list[tuple[str, dict[str, Any]]] = [("tool", tool) for tool in tools]
    system = params.get("system")
    if isinstance(system, str):
        segments.append(("system", {"type": "text", "text": system}))
    elif isinstance(system, list):
        segments.extend(("system", block) for block in system)
    for message in params["messages"]:
        content = message["content"]
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        segments.extend((message["role"], block) for block in blocks)
    running = hashlib.sha256(model.encode())
    chars = 0
    breakpoints: list[_Breakpoint] = []
    top_level = params.get("cache_control")
    for position, (role, block) in enumerate(segments):
        marker = block.get("cache_control")
        if marker is None and top_level is not None and position == len(segments) - 1:
            marker = top_level
        material = {key: value for key, value in block.items() if key != "cache_control"}
        running.update(orjson.dumps([role, material], option=orjson.OPT_SORT_KEYS))
        if role != "tool" and block.get("type") == "text" and isinstance(block.get("text"), str):
            chars += len(block["text"])
        else:
            chars += len(orjson.dumps(material))
        if isinstance(marker, dict):
            ttl = marker.get("ttl", "5m")
            if ttl not in _TTL_SECONDS:
                raise InvalidParams("cache_control.ttl: Input should be '5m' or '1h'")
            breakpoints.append(_Breakpoint(running.hexdigest(), chars, ttl))
    return chars, tuple(breakpoints)


def _required(params: dict[str, Any], name: str, kind: type, described: str) -> Any:
    if name not in params:
        raise InvalidParams(f"{name}: Field required")
    value = params[name]
    # bool is an int in Python but not a valid integer to the API.
    if not isinstance(value, kind) or isinstance(value, bool):
        raise InvalidParams(f"{name}: Input should be {described}")
    return value


def _check_messages(messages: list[Any]) -> None:
    for index, message in enumerate(messages):
        where = f"messages.{index}"
        if not isinstance(message, dict):
            raise InvalidParams(f"{where}: Input should be a valid dictionary")
        if message.get("role") not in ("user", "assistant"):
            raise InvalidParams(f"{where}.role: Input should be 'user' or 'assistant'")
        if "content" not in message:
            raise InvalidParams(f"{where}.content: Field required")
        content = message["content"]
        if isinstance(content, str):
            if not content:
                raise InvalidParams(f"{where}.content: text content blocks must be non-empty")
            continue
        if not isinstance(content, list) or not content:
            raise InvalidParams(f"{where}.content: Input should be a non-empty string or list")
        _check_blocks(content, f"{where}.content")


def _check_system(system: object) -> None:
    if system is None or isinstance(system, str):
        return
    if not isinstance(system, list):
        raise InvalidParams("system: Input should be a valid string or list of text blocks")
    _check_blocks(system, "system")


def _check_blocks(blocks: list[Any], where: str) -> None:
    for index, block in enumerate(blocks):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise InvalidParams(f"{where}.{index}.type: Field required")
        if block["type"] == "text" and not (isinstance(block.get("text"), str) and block["text"]):
            raise InvalidParams(f"{where}.{index}.text: text content blocks must be non-empty")


def _forced_tool(choice: object, tools: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The tool a `tool_choice` forces the model to call, if it forces one."""
    if choice is None:
        return None
    if not isinstance(choice, dict):
        raise InvalidParams("tool_choice: Input should be a valid dictionary")
    match choice.get("type"):
        case "auto" | "none":
            return None
        case "any":
            custom = [tool for tool in tools if "input_schema" in tool]
            if not custom:
                raise InvalidParams("tool_choice: 'any' requires at least one tool in tools")
            return custom[0]
        case "tool":
            name = choice.get("name")
            for tool in tools:
                if tool["name"] == name and "input_schema" in tool:
                    return tool
            raise InvalidParams(f"tool_choice.name: no tool named {name!r} in tools")
        case other:
            raise InvalidParams(
                f"tool_choice.type: Input tag {other!r} found using 'type' does not match any of "
                "the expected tags: 'auto', 'any', 'tool', 'none'"
            )


def _check_output_config(output_config: object) -> dict[str, Any] | None:
    """The JSON schema replies must match, if ``output_config.format`` asks for one."""
    if output_config is None:
        return None
    if not isinstance(output_config, dict):
        raise InvalidParams("output_config: Input should be a valid dictionary")
    output_format = output_config.get("format")
    if output_format is None:
        return None
    if not isinstance(output_format, dict) or output_format.get("type") != "json_schema":
        raise InvalidParams("output_config.format.type: Input should be 'json_schema'")
    schema = output_format.get("schema")
    if not isinstance(schema, dict):
        raise InvalidParams("output_config.format.schema: Input should be a valid dictionary")
    return schema


def _check_thinking(thinking: object, max_tokens: int, forced_tool: dict[str, Any] | None) -> bool:
    """Whether the reply starts with a thinking block; rejects settings the API rejects."""
    if thinking is None:
        return False
    if not isinstance(thinking, dict):
        raise InvalidParams("thinking: Input should be a valid dictionary")
    kind = thinking.get("type")
    if kind == "disabled":
        return False
    if kind not in ("enabled", "adaptive"):
        raise InvalidParams("thinking.type: Input should be 'enabled', 'adaptive' or 'disabled'")
    if forced_tool is not None:
        raise InvalidParams("Thinking may not be enabled when tool_choice forces tool use.")
    if kind == "enabled":
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or budget < 1024:
            raise InvalidParams(
                "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
            )
        if budget >= max_tokens:
            raise InvalidParams("`max_tokens` must be greater than `thinking.budget_tokens`.")
    return True
