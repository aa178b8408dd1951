"""Turn documents into Message Batches requests, and requests into batches within the API limits."""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel

from batchline import schemas
from batchline.config import ConfigError, JobConfig
from batchline.failpoints import failpoint
from batchline.load import Document, read_staged
from batchline.models import ModelLimits, ModelTable
from batchline.pricing import Usage, cost_usd, prices_file
from batchline.storage import (
    OutputLayout,
    remove_other_parts,
    reuse_or_restamp,
    write_stamp,
)
from batchline.structured import output_format
from batchline.wording import counted

log = logging.getLogger(__name__)

CUSTOM_ID_PATTERN = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_NOT_IN_CUSTOM_IDS = re.compile(r"[^a-zA-Z0-9_-]+")
CHARS_PER_TOKEN = 4
# 41 + "-" + 22 = 64 characters, the pattern's limit; 22 hex digits are 88 bits of hash.
_SLUG_CHARS = 41
_ID_HASH_CHARS = 22
# The create body wraps the requests in {"requests":[...]} and separates them by commas.
_BODY_OVERHEAD = 64


def custom_id_for(doc_id: str, params_hash: str) -> str:
    """A valid custom_id that names both the document and the exact request asked of it.

    A readable slug of the doc_id plus a hash of the doc_id and the request's params: the same
    document asked the same thing always gets the same id, and a changed template, model or text
    gets a new one. So an answer on record is reused only for a byte-identical request, and a
    batch adopted after a lost create is recognised as ours (or not) by its results' ids alone.
    """
    slug = _NOT_IN_CUSTOM_IDS.sub("_", doc_id).strip("_")[:_SLUG_CHARS] or "doc"
    digest = hashlib.sha256(f"{doc_id}\0{params_hash}".encode()).hexdigest()[:_ID_HASH_CHARS]
    return f"{slug}-{digest}"


def request_line(custom_id: str, params_json: bytes) -> bytes:
    """One request of a create body, from its params as JSON: the manifest's ``request_bytes``
    are the lengths of these, so the batches cut by them are the bodies submit sends."""
    # custom_ids match CUSTOM_ID_PATTERN, so they need no JSON escaping.
    return b'{"custom_id":"%s","params":%s}' % (custom_id.encode(), params_json)


def estimate_tokens(chars: int) -> int:
    """The project's token estimate: about four characters a token, at least one."""
    return max(1, math.ceil(chars / CHARS_PER_TOKEN))


def render_params(doc: Document, job: JobConfig) -> dict[str, Any]:
    """The Messages API params of one document's request; KeyError names a missing field."""
    assert doc.text is not None
    values = {**doc.fields, "doc_id": doc.doc_id, "text": doc.text}
    params: dict[str, Any] = {
        "model": job.model,
        "max_tokens": job.max_tokens,
        "messages": [{"role": "user", "content": job.template.format_map(values)}],
    }
    if job.system:
        # cache_control on the shared system prompt: written once, then read at a tenth of the
        # input price by every request that follows (batch and cache discounts stack).
        params["system"] = [
            {"type": "text", "text": job.system, "cache_control": {"type": "ephemeral"}}
        ]
    if job.temperature is not None:
        params["temperature"] = job.temperature
    if job.output_schema is not None:
        params["output_config"] = {"format": output_format(job.output_schema)}
    return params


class RowError(ValueError):
    """A row's own parameter that no request could be sent with; the row becomes invalid."""


_POSITIVE_INTEGER = re.compile(r"\d+")


def row_job(doc: Document, job: JobConfig, models: ModelTable) -> tuple[JobConfig, ModelLimits]:
    """The run's settings with this row's model, max_tokens, system and temperature columns.

    A missing or blank value keeps the run's. A value the API would refuse (max_tokens not an
    integer or over the model's limit, an unknown model) raises RowError naming the column.
    """
    values = {
        field: value
        for field, column in (
            ("model", job.model_column),
            ("max_tokens", job.max_tokens_column),
            ("system", job.system_column),
            ("temperature", job.temperature_column),
        )
        if (value := doc.fields.get(column)) is not None and value.strip()
    }
    model = values.get("model", job.model).strip()
    limits = models.models.get(model) or ModelLimits(model=model, problem="was not looked up")
    if limits.problem is not None:
        raise RowError(f"{job.model_column} column: model {model!r} {limits.problem}")
    overrides: dict[str, Any] = {"model": model} if "model" in values else {}
    if "max_tokens" in values:
        raw = values["max_tokens"].strip()
        if not _POSITIVE_INTEGER.fullmatch(raw) or int(raw) < 1:
            raise RowError(f"{job.max_tokens_column} column: {raw!r} is not a positive integer")
        overrides["max_tokens"] = int(raw)
    if "temperature" in values:
        try:
            temperature = float(values["temperature"])
        except ValueError:
            temperature = math.nan
        if not 0.0 <= temperature <= 1.0:
            raise RowError(
                f"{job.temperature_column} column: {values['temperature']!r} is not a number "
                "from 0 to 1"
            )
        overrides["temperature"] = temperature
    if "system" in values:
        overrides["system"] = values["system"]
    # model_copy skips validation: every override was checked above.
    row = job.model_copy(update=overrides) if overrides else job
    if limits.max_tokens is not None and row.max_tokens > limits.max_tokens:
        raise RowError(
            f"max_tokens {row.max_tokens} is over {model}'s output limit of "
            f"{limits.max_tokens} tokens"
        )
    return row, limits


def requested_models(layout: OutputLayout, job: JobConfig) -> set[str]:
    """The models the staged rows name in their model column (blank values left out)."""
    # Only rows whose fields hold the column's key, as orjson wrote it, are parsed: most rows
    # name no model, and parsing every row's fields was a fifth of a second per 100,000.
    key = orjson.dumps(job.model_column).decode() + ":"
    models: set[str] = set()
    for name in layout.names("documents", ".parquet"):
        fields = layout.read_table("documents", name, columns=["fields_json"]).column(0)
        for raw in fields.filter(pc.match_substring(fields, key)).to_pylist():
            value = orjson.loads(raw).get(job.model_column)
            if isinstance(value, str) and value.strip():
                models.add(value.strip())
    return models


def params_json_and_hash(params: dict[str, Any]) -> tuple[bytes, str]:
    """The params as the request sends them, and their hash; keys sorted, so the same params
    always give the same bytes and hash."""
    encoded = orjson.dumps(params, option=orjson.OPT_SORT_KEYS)
    return encoded, hashlib.sha256(encoded).hexdigest()


def build_shard(
    docs: Sequence[Document], job: JobConfig, taken_custom_ids: set[str], models: ModelTable
) -> tuple[pa.Table, pa.Table]:
    """The manifest rows and the invalid rows of one shard of documents.

    ``taken_custom_ids`` spans shards so that two documents never share a custom_id. ``models``
    holds the limits of the run's model and of every model a row names.
    """
    manifest: list[dict[str, Any]] = []
    invalid: list[dict[str, Any]] = []
    columns = (job.model_column, job.max_tokens_column, job.system_column, job.temperature_column)
    # A row's settings follow from its values in those columns alone, and most rows share them.
    settings: dict[tuple[str | None, ...], tuple[JobConfig, ModelLimits] | RowError] = {}
    for doc in docs:
        if doc.invalid_reason is not None:
            invalid.append({"doc_id": doc.doc_id, "reason": doc.invalid_reason})
            continue
        values = tuple(map(doc.fields.get, columns)) if doc.fields else ()
        if (found := settings.get(values)) is None:
            try:
                found = settings[values] = row_job(doc, job, models)
            except RowError as exc:
                found = settings[values] = exc
        if isinstance(found, RowError):
            invalid.append({"doc_id": doc.doc_id, "reason": str(found)})
            continue
        row, limits = found
        try:
            params = render_params(doc, row)
        except (KeyError, IndexError, ValueError) as exc:
            invalid.append({"doc_id": doc.doc_id, "reason": f"template: no field {exc}"})
            continue
        params_json, digest = params_json_and_hash(params)
        custom_id = custom_id_for(doc.doc_id, digest)
        if custom_id in taken_custom_ids:
            invalid.append({"doc_id": doc.doc_id, "reason": f"custom_id {custom_id} collides"})
            continue
        body = request_line(custom_id, params_json)
        tokens = estimate_tokens(len(params["messages"][0]["content"]) + len(row.system or ""))
        context = limits.max_input_tokens
        if context is not None and tokens + row.max_tokens > context:
            invalid.append(
                {
                    "doc_id": doc.doc_id,
                    "reason": f"about {tokens} input tokens + max_tokens {row.max_tokens} exceed "
                    f"the model's context of {context} tokens",
                }
            )
            continue
        if len(body) + _BODY_OVERHEAD > job.max_batch_bytes:
            invalid.append(
                {"doc_id": doc.doc_id, "reason": f"request is {len(body)} bytes, over a batch"}
            )
            continue
        taken_custom_ids.add(custom_id)
        manifest.append(
            {
                "custom_id": custom_id,
                "doc_id": doc.doc_id,
                "params_json": params_json.decode(),
                "params_hash": digest,
                "request_bytes": len(body),
                "estimated_input_tokens": tokens,
                "model": row.model,
                "max_tokens": row.max_tokens,
            }
        )
    return schemas.table(manifest, schemas.MANIFEST), schemas.table(invalid, schemas.INVALID)


def split_batches(request_bytes: Sequence[int], max_requests: int, max_bytes: int) -> list[range]:
    """Consecutive index ranges, each within the request-count and body-size limits of a batch."""
    ranges: list[range] = []
    start, size = 0, _BODY_OVERHEAD
    for index, nbytes in enumerate(request_bytes):
        count = index - start
        if count and (count >= max_requests or size + nbytes + 1 > max_bytes):
            ranges.append(range(start, index))
            start, size = index, _BODY_OVERHEAD
        size += nbytes + 1
    if start < len(request_bytes):
        ranges.append(range(start, len(request_bytes)))
    return ranges


class BuildSummary(BaseModel):
    fingerprint: str
    requests: int
    invalid: int
    request_bytes: int
    estimated_input_tokens: int
    worst_case_cost_usd: float | None
    invalid_reasons: dict[str, int]
    unpriced_models: list[str] = []


def manifest_fingerprint(source_fingerprint: str, job: JobConfig, models: ModelTable) -> str:
    """What the manifest answers: the staged documents, the request shape, the models' limits."""
    parts = (source_fingerprint, job.request_fingerprint(), models.fingerprint())
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


@dataclass(frozen=True)
class BuildPlan:
    """What building takes: the manifest's fingerprint, and the staged parts unless built."""

    fingerprint: str
    parts: list[str]
    built: BuildSummary | None = None


class BuiltPart(BaseModel):
    """What one part's requests add up to, for the run's summary."""

    requests: int
    invalid: int
    request_bytes: int
    estimated_input_tokens: int
    # Per model, since rows may name their own: estimated input and max_tokens, summed.
    worst_case: dict[str, dict[str, int]]
    invalid_reasons: dict[str, int]


def plan_build(
    layout: OutputLayout, job: JobConfig, source_fingerprint: str, models: ModelTable
) -> BuildPlan:
    """The staged parts to build, or none when ``manifest/`` already answers them.

    The fingerprint identifies the manifest: the staged source's content, the request shape and
    the models' limits. A stale stamp is dropped here, before any part is rewritten.
    """
    fingerprint = manifest_fingerprint(source_fingerprint, job, models)
    if (built := reuse_or_restamp(layout, "manifest", fingerprint)) is not None:
        return BuildPlan(fingerprint, [], BuildSummary.model_validate(built))
    return BuildPlan(fingerprint, layout.names("documents", ".parquet"))


def build_part(layout: OutputLayout, job: JobConfig, models: ModelTable, name: str) -> BuiltPart:
    """Render staged part ``name`` into the ``manifest/`` part of that name, and the
    ``invalid/`` part too when some document of it is invalid.

    Custom_ids need checking within a part only: the load step left one valid document per
    doc_id, and a custom_id hashes its doc_id.
    """
    manifest, bad = build_shard(read_staged(layout, name), job, set(), models)
    layout.write_table("manifest", name, manifest)
    # Most parts have no invalid document: no file, so the write plans no task for them.
    if bad.num_rows:
        layout.write_table("invalid", name, bad)
    elif layout.exists("invalid", name):  # an earlier run's invalid rows of this part
        layout.fs.rm(layout.path("invalid", name))
    sums = manifest.group_by("model").aggregate(
        [("estimated_input_tokens", "sum"), ("max_tokens", "sum")]
    )
    return BuiltPart(
        requests=manifest.num_rows,
        invalid=bad.num_rows,
        request_bytes=pc.sum(manifest.column("request_bytes")).as_py() or 0,
        estimated_input_tokens=pc.sum(manifest.column("estimated_input_tokens")).as_py() or 0,
        worst_case={
            row["model"]: {
                "input_tokens": row["estimated_input_tokens_sum"],
                "output_tokens": row["max_tokens_sum"],
            }
            for row in sums.to_pylist()
        },
        # Grouped by their kind (the text before any detail) for a readable summary.
        invalid_reasons=Counter(r.split(" (")[0] for r in bad.column("reason").to_pylist()),
    )


def finish_build(layout: OutputLayout, plan: BuildPlan, parts: list[BuiltPart]) -> BuildSummary:
    """Add the parts up, drop parts of earlier runs, and stamp the manifest."""
    if plan.built is not None:
        return plan.built
    for area in ("manifest", "invalid"):
        remove_other_parts(layout, area, set(plan.parts))
    worst_case: dict[str, Counter[str]] = {}
    reasons: Counter[str] = Counter()
    for part in parts:
        for model, totals in part.worst_case.items():
            worst_case.setdefault(model, Counter()).update(totals)
        reasons.update(part.invalid_reasons)
    costs = {m: cost_usd(m, Usage(**totals)) for m, totals in worst_case.items()}
    unpriced = sorted(m for m, cost in costs.items() if cost is None)
    for model in unpriced:
        log.warning(
            "model %r has no price in %s: its rows' cost_usd will be null; add its price there",
            model,
            prices_file(),
        )
    summary = BuildSummary(
        fingerprint=plan.fingerprint,
        requests=sum(p.requests for p in parts),
        invalid=sum(p.invalid for p in parts),
        request_bytes=sum(p.request_bytes for p in parts),
        estimated_input_tokens=sum(p.estimated_input_tokens for p in parts),
        worst_case_cost_usd=None if unpriced else sum(c or 0.0 for c in costs.values()),
        invalid_reasons=dict(reasons),
        unpriced_models=unpriced,
    )
    write_stamp(layout, ("manifest", "invalid"), plan.fingerprint, summary)
    failpoint("build.done")
    return summary


def build_manifest(
    layout: OutputLayout, job: JobConfig, source_fingerprint: str, models: ModelTable
) -> BuildSummary:
    """Render every staged document into ``manifest/`` and ``invalid/`` parts, in this process.

    The flow runs the same steps as tasks, the parts mapped over its task runner's workers.
    """
    plan = plan_build(layout, job, source_fingerprint, models)
    parts = [build_part(layout, job, models, name) for name in plan.parts]
    return finish_build(layout, plan, parts)


class BudgetExceeded(ConfigError):
    """The worst-case cost of the requests is over the run's budget; nothing was submitted."""


def check_submittable(summary: BuildSummary, job: JobConfig) -> None:
    """Refuse, before any spend, a run whose every document failed the template or the budget."""
    if summary.requests == 0:
        template_problems = {r: n for r, n in summary.invalid_reasons.items() if "template" in r}
        if template_problems:
            raise ConfigError(
                f"template {job.template!r} fails for every document: {template_problems}"
            )
        return
    if job.max_cost_usd is None:
        return
    if summary.worst_case_cost_usd is None:
        raise BudgetExceeded(
            f"model {', '.join(map(repr, summary.unpriced_models))} has no price in "
            f"data/prices.json, so the budget of ${job.max_cost_usd:.2f} cannot be checked; add "
            "its price or drop --max-cost-usd"
        )
    if summary.worst_case_cost_usd > job.max_cost_usd:
        raise BudgetExceeded(
            f"{counted(summary.requests, 'request')} could cost up to "
            f"${summary.worst_case_cost_usd:.2f} "
            "at batch prices (estimated input, output at each request's max_tokens), over "
            f"the budget of ${job.max_cost_usd:.2f}; nothing was submitted"
        )
