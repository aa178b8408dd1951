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
from batchline.storage import (
    OutputLayout,
    part_name,
    remove_parts_from,
    reuse_or_restamp,
    write_stamp,
)
from batchline.structured import output_format

log = logging.getLogger(__name__)

CUSTOM_ID_PATTERN = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
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
    slug = re.sub(r"[^a-zA-Z0-9_-]+", "_", doc_id).strip("_")[:_SLUG_CHARS] or "doc"
    digest = hashlib.sha256(f"{doc_id}\0{params_hash}".encode()).hexdigest()[:_ID_HASH_CHARS]
    return f"{slug}-{digest}"


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
        digest = params_hash(params)
        custom_id = custom_id_for(doc.doc_id, digest)
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
                "params_hash": digest,
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


def manifest_fingerprint(source_fingerprint: str, job: JobConfig) -> str:
    """What the manifest answers: the staged documents' content and the shape of the requests."""
    return hashlib.sha256(f"{source_fingerprint}\0{job.request_fingerprint()}".encode()).hexdigest()


def build_manifest(layout: OutputLayout, job: JobConfig, source_fingerprint: str) -> BuildSummary:
    """Render every staged document into ``manifest/`` and ``invalid/`` parts, shard by shard.

    The summary's fingerprint identifies the manifest: the staged source's content and the
    request shape. A manifest on disk that already answers that fingerprint is kept as it is.
    """
    fingerprint = manifest_fingerprint(source_fingerprint, job)
    if (built := reuse_or_restamp(layout, "manifest", fingerprint)) is not None:
        return BuildSummary.model_validate(built)
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
    cost = cost_usd(job.model, Usage(input_tokens=tokens, output_tokens=job.max_tokens * requests))
    if cost is None:
        log.warning(
            "model %r has no price in data/prices.json: its costs will be reported as null",
            job.model,
        )
    summary = BuildSummary(
        fingerprint=fingerprint,
        requests=requests,
        invalid=invalid,
        request_bytes=nbytes,
        estimated_input_tokens=tokens,
        worst_case_cost_usd=cost,
        invalid_reasons=dict(reasons),
    )
    write_stamp(layout, ("manifest", "invalid"), fingerprint, summary)
    failpoint("build.done")
    return summary


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
