"""Structured outputs: the JSON Schema a run asks for, its typed columns, and each reply's check.

A run's schema comes from a JSON Schema file or a Pydantic model and is kept as the user wrote it
(constraints included), so replies are validated against all of it. What the request carries is
that schema made API-ready by the SDK's own ``transform_schema``, which drops what the API does
not accept (``minimum``, say) into the field's description.

Replies are validated when a batch is collected, not when results are written: the status
``invalid_output`` must be on record in the collected file, where the ledger reads every request's
latest outcome and retry.py decides from it, like any other status. The collected files keep one
fixed schema whatever the job; the typed columns are made from the validated text when the results
are written (``typed_columns``).
"""

from __future__ import annotations

import functools
import importlib
from typing import Any

import anthropic
import jsonschema
import orjson
import pyarrow as pa
from pydantic import BaseModel

from batchline import schemas
from batchline.config import ConfigError
from batchline.storage import filesystem

# What a reply that fails its check carries as error_type; its status is ``invalid_output``.
NOT_JSON = "invalid_json"
NOT_VALID = "schema_mismatch"
_MAX_ERROR_CHARS = 500


def load_output_schema(
    output_schema: dict[str, Any] | str | None, output_model: str | None
) -> dict[str, Any] | None:
    """The run's JSON Schema from a schema (or the path of a .json file) or a Pydantic model.

    ``output_model`` is ``package.module:Model``. Raises ConfigError, naming the file, model or
    field, for anything unusable, so a run refuses before it loads a document.
    """
    if output_schema is not None and output_model is not None:
        raise ConfigError("give an output schema or an output model, not both")
    if isinstance(output_schema, str):
        output_schema = _read_schema_file(output_schema)
    elif output_model is not None:
        output_schema = _import_model(output_model).model_json_schema()
    return None if output_schema is None else check_output_schema(output_schema)


def check_output_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` if it is a JSON Schema of an object whose fields map to Arrow types."""
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ConfigError(f"output schema is not a valid JSON Schema: {exc.message}") from None
    if _resolve(schema, schema).get("type") != "object" or not schema.get("properties"):
        raise ConfigError('output schema must be {"type": "object", "properties": {...}}')
    for name in schema["properties"]:
        if name in schemas.RESULTS.names:
            raise ConfigError(
                f"output schema field {name!r} collides with the results column {name!r}; "
                "rename the field"
            )
    arrow_schema(schema)
    try:
        anthropic.transform_schema(schema)
    # The SDK asserts on what it cannot transform.
    except (ValueError, AssertionError) as exc:
        raise ConfigError(f"output schema cannot be sent to the API: {exc}") from None
    return schema


def output_format(schema: dict[str, Any]) -> dict[str, Any]:
    """The request's ``output_config.format``: the schema made API-ready by the SDK."""
    # Every request of a run carries the same format: transform the schema once, not per request.
    return _output_format(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS))


@functools.lru_cache(maxsize=8)
def _output_format(schema_json: bytes) -> dict[str, Any]:
    return {"type": "json_schema", "schema": anthropic.transform_schema(orjson.loads(schema_json))}


def arrow_schema(schema: dict[str, Any]) -> pa.Schema:
    """One nullable column per top-level field, typed from the JSON Schema."""
    return pa.schema(
        [
            pa.field(name, _arrow_type(node, schema, name))
            for name, node in _resolve(schema, schema)["properties"].items()
        ]
    )


def typed_columns(
    texts: pa.Array | pa.ChunkedArray, valid: pa.Array, schema: pa.Schema
) -> pa.Table:
    """The fields of each valid reply as columns of ``schema``; other rows are null."""
    objects = [
        orjson.loads(text) if ok else {}
        for text, ok in zip(texts.to_pylist(), valid.to_pylist(), strict=True)
    ]
    return pa.Table.from_pylist(objects, schema=schema)


class ReplyValidator:
    """Checks replies against a run's schema; built once per collected batch."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self._validator = jsonschema.validators.validator_for(schema)(schema)

    def check(self, row: dict[str, Any]) -> None:
        """Turn a succeeded row whose text does not parse or validate into ``invalid_output``."""
        if row["status"] != "succeeded":
            return
        problem = self.problem(row["text"] or "")
        if problem is not None:
            row["status"] = "invalid_output"
            row["error_type"], row["error_message"] = problem

    def problem(self, text: str) -> tuple[str, str] | None:
        """(error_type, message) of a reply that is not JSON or not valid; None if it is fine."""
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            return NOT_JSON, f"not valid JSON: {exc}"[:_MAX_ERROR_CHARS]
        error = jsonschema.exceptions.best_match(self._validator.iter_errors(value))
        if error is None:
            return None
        where = "/".join(map(str, error.absolute_path)) or "(root)"
        return NOT_VALID, f"{where}: {error.message}"[:_MAX_ERROR_CHARS]


def _read_schema_file(path: str) -> dict[str, Any]:
    fs, inner = filesystem(path)
    try:
        with fs.open(inner, "rb") as handle:
            loaded = orjson.loads(handle.read())
    except FileNotFoundError:
        raise ConfigError(f"output schema file {path} does not exist") from None
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"output schema file {path} is not valid JSON: {exc}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"output schema file {path} holds no JSON object")
    return loaded


def _import_model(spec: str) -> type[BaseModel]:
    module_name, _, attribute = spec.partition(":")
    try:
        model = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(
            f"output model {spec!r} cannot be imported ({exc}); expected package.module:Model"
        ) from None
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise ConfigError(f"output model {spec!r} is not a Pydantic model class")
    return model


def _resolve(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    """``node``, or the definition its local ``$ref`` (``#/$defs/X``) points to."""
    while "$ref" in node:
        ref = node["$ref"]
        if not isinstance(ref, str) or not ref.startswith("#/"):
            raise ConfigError(f"output schema: only local $refs are supported, got {ref!r}")
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part) if isinstance(target, dict) else None
        if not isinstance(target, dict):
            raise ConfigError(f"output schema: $ref {ref!r} points nowhere")
        node = target
    return node


def _arrow_type(node: dict[str, Any], root: dict[str, Any], where: str) -> pa.DataType:
    node = _resolve(node, root)
    literals = node.get("enum", [node["const"]] if "const" in node else None)
    if literals is not None:
        return _literal_type(literals, where)
    variants = node.get("anyOf") or node.get("oneOf") or node.get("allOf")
    if variants is not None:
        # Optional[X] is anyOf [X, null]: the column is X, nullable like every column.
        kinds = {
            _arrow_type(v, root, where) for v in variants if _resolve(v, root).get("type") != "null"
        }
        if len(kinds) != 1:
            raise ConfigError(f"output schema field {where!r}: alternatives of different types")
        return kinds.pop()
    # A list of types ("type": ["integer", "null"]) is refused: the SDK cannot make it API-ready.
    match node.get("type"):
        case "string":
            return pa.string()
        case "integer":
            return pa.int64()
        case "number":
            return pa.float64()
        case "boolean":
            return pa.bool_()
        case "array" if isinstance(node.get("items"), dict):
            return pa.list_(_arrow_type(node["items"], root, f"{where}[]"))
        case "object" if node.get("properties"):
            return pa.struct(
                [
                    pa.field(name, _arrow_type(child, root, f"{where}.{name}"))
                    for name, child in node["properties"].items()
                ]
            )
        case _:
            raise ConfigError(
                f"output schema field {where!r} has no column type: expected a string, integer, "
                "number, boolean, enum, array with items, or object with properties"
            )


def _literal_type(values: list[Any], where: str) -> pa.DataType:
    kinds = {type(v) for v in values if v is not None}
    if kinds == {str}:
        return pa.string()
    if kinds == {bool}:
        return pa.bool_()
    if kinds == {int}:
        return pa.int64()
    if kinds and kinds <= {int, float}:
        return pa.float64()
    raise ConfigError(f"output schema field {where!r}: enum values of mixed or unsupported types")
