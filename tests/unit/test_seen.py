"""The on-disk id set behind the duplicate checks of load and build."""

from __future__ import annotations

import json
from pathlib import Path

from batchline.config import SourceOptions
from batchline.load import iter_shards
from batchline.seen import SeenIds


def test_first_seen_spans_calls_and_repeats_within_one_call() -> None:
    with SeenIds() as seen:
        assert seen.first_seen(["a", "b", "a"]) == [True, True, False]
        assert seen.first_seen(["c", "b", "c", "d"]) == [True, False, False, True]
        many = [f"id-{i}" for i in range(70_000)]  # more than one query's worth of parameters
        assert all(seen.first_seen(many))
        assert not any(seen.first_seen(many[::-1]))
        assert seen.first_seen(["a", "new"]) == [False, True]


def test_a_doc_id_repeated_in_a_later_shard_is_a_duplicate(tmp_path: Path) -> None:
    source = tmp_path / "docs.jsonl"
    ids = ["a", "b", "c", "a", "b", "d"]
    source.write_text("".join(json.dumps({"id": i, "text": f"text {i}"}) + "\n" for i in ids))
    shards = list(iter_shards(str(source), SourceOptions(shard_size=2)))
    assert [len(s) for s in shards] == [2, 2, 2]
    reasons = [d.invalid_reason for shard in shards for d in shard]
    assert reasons == [None, None, None, "duplicate doc_id", "duplicate doc_id", None]
