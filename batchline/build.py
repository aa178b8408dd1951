"""Turn documents into Message Batches requests, and requests into batches within the API limits."""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel

from batchline import schemas
from batchline.config import ConfigError, JobConfig
from batchline.failpoints import failpoint
from batchline.load import Document, read_staged
from batchline.pricing import DEFAULT_CONTEXT_TOKENS, Usage, cost_usd, price_table
from batchline.storage import OutputLayout, part_name, remove_parts_from

log = logging.getLogger(__name__)

CUSTOM_ID_PATTERN = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
CHARS_PER_TOKEN = 4
# The create body wraps the requests in {"requests":[...]} and separates them by commas.
_BODY_OVERHEAD = 64


def custom_id_for(doc_id: str) -> str:
    """A valid, stable custom_id: the doc_id itself when it fits the API's pattern.

    Otherwise a readable slug of it plus a hash, so ids stay unique and a person can still tell
    which document a result belongs to; the mapping is kept in the manifest.
    """
    if CUSTOM_ID_PATTERN.match(doc_id):
        return doc_id
    slug = re.sub(r"[^a-zA-Z0-9_-]+", "_", doc_id).strip("_")[:40]
    digest = hashlib.sha256(doc_id.encode("utf-8")).hexdigest()[:22]
    return f"{slug}-{digest}" if slug else f"h-{digest}"


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
    return params


def params_hash(params: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(params, option=orjson.OPT_SORT_KEYS)).hexdigest()


def build_shard(
    docs: Sequence[Document], job: JobConfig, taken_custom_ids: set[str]
) -> tuple[pa.Table, pa.Table]:
    """The manifest rows and the invalid rows of one shard of documents.

    ``taken_custom_ids`` spans shards so that two documents never share a custom_id.
    """
    price = price_table().for_model(job.model)
    context = price.context_tokens if price else DEFAULT_CONTEXT_TOKENS
    manifest: list[dict[str, Any]] = []
    invalid: list[dict[str, Any]] = []
    for doc in docs:
        if doc.invalid_reason is not None:
            invalid.append({"doc_id": doc.doc_id, "reason": doc.invalid_reason})
            continue
        try:
            params = render_params(doc, job)
        except (KeyError, IndexError, ValueError) as exc:
            invalid.append({"doc_id": doc.doc_id, "reason": f"template: no field {exc}"})
            continue
        custom_id = custom_id_for(doc.doc_id)
        if custom_id in taken_custom_ids:
            invalid.append({"doc_id": doc.doc_id, "reason": f"custom_id {custom_id} collides"})
            continue
        body = orjson.dumps({"custom_id": custom_id, "params": params})
        tokens = estimate_tokens(len(params["messages"][0]["content"]) + len(job.system or ""))
        if tokens + job.max_tokens > context:
            invalid.append(
                {
                    "doc_id": doc.doc_id,
                    "reason": f"about {tokens} input tokens + max_tokens {job.max_tokens} exceed "
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
                "params_json": orjson.dumps(params).decode(),
                "params_hash": params_hash(params),
                "request_bytes": len(body),
                "estimated_input_tokens": tokens,
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


def build_manifest(layout: OutputLayout, job: JobConfig, source_fingerprint: str) -> BuildSummary:
    """Render every staged document into ``manifest/`` and ``invalid/`` parts, shard by shard.

    The summary's fingerprint identifies the manifest: the staged source and the request shape.
    """
    taken: set[str] = set()
    requests = invalid = nbytes = tokens = 0
    reasons: Counter[str] = Counter()
    names = layout.names("documents", ".parquet")
    for index, name in enumerate(names):
        manifest, bad = build_shard(read_staged(layout, name), job, taken)
        layout.write_table("manifest", part_name(index), manifest)
        layout.write_table("invalid", part_name(index), bad)
        requests += manifest.num_rows
        invalid += bad.num_rows
        nbytes += pc.sum(manifest.column("request_bytes")).as_py() or 0
        tokens += pc.sum(manifest.column("estimated_input_tokens")).as_py() or 0
        # Group reasons by their kind (the text before any detail) for a readable summary.
        reasons.update(r.split(" (")[0] for r in bad.column("reason").to_pylist())
    for area in ("manifest", "invalid"):
        remove_parts_from(layout, area, len(names))
    failpoint("build.done")
    cost = cost_usd(job.model, Usage(input_tokens=tokens, output_tokens=job.max_tokens * requests))
    if cost is None:
        log.warning(
            "model %r has no price in data/prices.json: its costs will be reported as null",
            job.model,
        )
    fingerprint = hashlib.sha256(
        f"{source_fingerprint}\0{job.request_fingerprint()}".encode()
    ).hexdigest()
    return BuildSummary(
        fingerprint=fingerprint,
        requests=requests,
        invalid=invalid,
        request_bytes=nbytes,
        estimated_input_tokens=tokens,
        worst_case_cost_usd=cost,
        invalid_reasons=dict(reasons),
    )


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
            f"model {job.model!r} has no price in data/prices.json, so the budget of "
            f"${job.max_cost_usd:.2f} cannot be checked; add its price or drop --max-cost-usd"
        )
    if summary.worst_case_cost_usd > job.max_cost_usd:
        raise BudgetExceeded(
            f"{summary.requests} requests could cost up to ${summary.worst_case_cost_usd:.2f} "
            f"at batch prices (estimated input, output at max_tokens={job.max_tokens}), over "
            f"the budget of ${job.max_cost_usd:.2f}; nothing was submitted"
        )
