"""Values that satisfy a JSON schema: a tool call's input, a structured-output reply.

One generator, steered by a `Pick`: `first` always takes the first choice (the plainest value: a
forced tool's input, as documented), `seeded` takes choices drawn from a hash, so each request
gets its own deterministic mix of enum values, numbers, optional fields and list lengths.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from typing import Any, Final

#: (where in the value, how many choices) -> the index of the choice taken.
Pick = Callable[[str, int], int]

WORDS: Final = ("emulated", "alpha", "bravo", "charlie", "delta", "echo", "foxtrot")
_DEFAULT_ARRAY_SPAN: Final = 4
_DEFAULT_NUMBER_SPAN: Final = 100


def first(where: str, choices: int) -> int:
    """Always the first choice."""
    return 0


def seeded(material: str) -> Pick:
    """Choices drawn from a hash of ``material`` and the place in the value."""

    def pick(where: str, choices: int) -> int:
        digest = hashlib.sha256(f"{material}\x1f{where}".encode()).digest()
        return int.from_bytes(digest[:8], "big") % choices

    return pick


def schema_value(
    schema: object, pick: Pick = first, root: dict[str, Any] | None = None, where: str = "$"
) -> Any:
    """A value of ``schema``; ``root`` holds the ``$defs`` its local ``$ref``s point to."""
    if not isinstance(schema, dict):
        return WORDS[0]
    root = schema if root is None else root
    schema = _resolve(schema, root)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][pick(where, len(schema["enum"]))]
    if "default" in schema and pick(f"{where}#default", 2) == 0:
        return schema["default"]
    for combinator in ("anyOf", "oneOf"):
        if schema.get(combinator):
            variants = schema[combinator]
            return schema_value(variants[pick(where, len(variants))], pick, root, where)
    if schema.get("allOf"):
        return schema_value(schema["allOf"][0], pick, root, where)
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"] or ["null"]
        kind = kinds[pick(f"{where}#type", len(kinds))]
    if kind is None and "properties" in schema:
        kind = "object"
    match kind:
        case "object":
            properties = schema.get("properties", {})
            required = schema.get("required", [])
            names = [
                name
                for name in properties
                if name in required or pick(f"{where}.{name}#present", 2) == 1
            ]
            names += [name for name in required if name not in properties]
            return {
                name: schema_value(properties.get(name), pick, root, f"{where}.{name}")
                for name in names
            }
        case "array":
            low = schema.get("minItems", 0)
            high = schema.get("maxItems", low + _DEFAULT_ARRAY_SPAN - 1)
            count = low + pick(f"{where}#len", max(1, high - low + 1))
            return [
                schema_value(schema.get("items"), pick, root, f"{where}[{i}]") for i in range(count)
            ]
        case "integer":
            low = math.ceil(schema.get("minimum", 0))
            high = math.floor(schema.get("maximum", low + _DEFAULT_NUMBER_SPAN - 1))
            return low + pick(where, max(1, high - low + 1))
        case "number":
            low = float(schema.get("minimum", 0))
            high = float(schema.get("maximum", low + _DEFAULT_NUMBER_SPAN))
            return low + (high - low) * pick(where, 101) / 100
        case "boolean":
            return pick(where, 2) == 1
        case "null":
            return None
        case _:
            return WORDS[pick(where, len(WORDS))]


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    """The definition a local ``$ref`` (``#/$defs/X``) points to; ``schema`` if it has none."""
    ref = schema.get("$ref")
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return schema
    target: Any = root
    for part in ref[2:].split("/"):
        target = target.get(part) if isinstance(target, dict) else None
    return _resolve(target, root) if isinstance(target, dict) else schema
