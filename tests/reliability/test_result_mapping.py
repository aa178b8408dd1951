"""Property tests: every result line lands on its own document's row, whatever the order.

Documents go through the real load, build, ledger, collect (``write_collected``, the function
the download feeds) and write steps; only the result lines are generated here, in any order,
with any mix of outcomes and a retry pass for the retryable ones.
"""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from typing import Any

import orjson
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchline.build import build_manifest
from batchline.collect import CollectError, write_collected
from batchline.config import JobConfig, SourceOptions
from batchline.ledger import Ledger
from batchline.load import stage_documents
from batchline.retry import needs_submission
from batchline.storage import OutputLayout
from batchline.write import write_results
from tests.support import model_table, result_line

JOB = JobConfig()
OUTCOMES = ["succeeded", "overloaded_error", "invalid_request_error", "expired"]

doc_ids = st.lists(
    st.text(min_size=1, max_size=24).filter(lambda s: s.strip() == s and s != ""),
    min_size=1,
    max_size=25,
    unique=True,
)


def _staged(root: str, ids: list[str], shard_size: int) -> tuple[OutputLayout, pa.Table]:
    """Documents with these ids loaded and built; the layout and the whole manifest."""
    source = f"{root}/docs.jsonl"
    with open(source, "wb") as handle:
        handle.write(b"\n".join(orjson.dumps({"id": i, "text": f"text of {i}"}) for i in ids))
    layout = OutputLayout(f"{root}/out")
    loaded = stage_documents(source, layout, SourceOptions(shard_size=shard_size))
    build_manifest(layout, JOB, loaded.fingerprint, model_table(JOB.model))
    parts = [layout.read_table("manifest", n) for n in layout.names("manifest", ".parquet")]
    return layout, pa.concat_tables(parts)


def _submit(layout: OutputLayout, requests: pa.Table, batch_id: str) -> None:
    now = datetime.now(UTC)
    ledger = Ledger(layout)
    ledger.record_batch(ledger.record_intent(requests), batch_id, now, now, adopted=False)


@settings(max_examples=40, deadline=None)
@given(ids=doc_ids, data=st.data())
def test_every_result_lands_on_its_row_whatever_the_order(ids: list[str], data: Any) -> None:
    with tempfile.TemporaryDirectory() as root:
        layout, manifest = _staged(root, ids, data.draw(st.integers(1, 8), label="shard_size"))
        custom_ids, hashes = manifest["custom_id"].to_pylist(), manifest["params_hash"].to_pylist()
        doc_of = dict(zip(custom_ids, manifest["doc_id"].to_pylist(), strict=True))
        assert sorted(doc_of.values()) == sorted(ids)

        first = {cid: data.draw(st.sampled_from(OUTCOMES), label=cid) for cid in doc_of}
        expected = {doc_of[c]: (o, 1, f"{doc_of[c]} in b1") for c, o in first.items()}
        _submit(layout, manifest, "msgbatch_1")
        lines = [result_line(c, o, f"{doc_of[c]} in b1") for c, o in first.items()]
        write_collected(layout, "msgbatch_1", data.draw(st.permutations(lines)), set(doc_of))

        # The retry pass takes exactly the retryable ones, and all of them succeed.
        states = Ledger(layout).request_states()
        retry = [
            needs_submission(states[c], h, JOB.retry_policy())
            for c, h in zip(custom_ids, hashes, strict=True)
        ]
        again = manifest.filter(pa.array(retry))
        retried = again["custom_id"].to_pylist()
        assert set(retried) == {c for c, o in first.items() if o in ("overloaded_error", "expired")}
        if again.num_rows:
            _submit(layout, again, "msgbatch_2")
            lines = [result_line(c, "succeeded", f"{doc_of[c]} in b2") for c in retried]
            write_collected(layout, "msgbatch_2", data.draw(st.permutations(lines)), set(retried))
            for c in retried:
                expected[doc_of[c]] = ("succeeded", 2, f"{doc_of[c]} in b2")

        summary = write_results(layout)
        table = pd.read_parquet(summary.output)

    assert sorted(table.doc_id) == sorted(ids)  # one row per document
    rows = table.set_index("doc_id")
    for doc_id, (outcome, attempts, answer) in expected.items():
        row = rows.loc[doc_id]
        status = outcome if outcome in ("succeeded", "expired") else "errored"
        assert (row.status, row.attempts) == (status, attempts)
        if status == "succeeded":
            assert row.text == answer
        else:
            assert pd.isna(row.text)
        if status == "errored":
            assert row.error_type == outcome


@settings(max_examples=25, deadline=None)
@given(ids=doc_ids, stray=st.sampled_from(["unknown", "duplicate"]), data=st.data())
def test_a_result_the_ledger_does_not_list_fails_the_batch_and_writes_nothing(
    ids: list[str], stray: str, data: Any
) -> None:
    with tempfile.TemporaryDirectory() as root:
        layout, manifest = _staged(root, ids, shard_size=10)
        custom_ids = manifest["custom_id"].to_pylist()
        lines = [result_line(c, "succeeded", "ok") for c in custom_ids]
        if stray == "unknown":
            extra = result_line("not-in-this-batch", "succeeded", "ok")
        else:
            extra = data.draw(st.sampled_from(lines))
        lines.insert(data.draw(st.integers(0, len(lines))), extra)
        with pytest.raises(CollectError, match="does not list for it"):
            write_collected(layout, "msgbatch_x", lines, set(custom_ids))
        assert layout.names("collected", ".parquet") == []
