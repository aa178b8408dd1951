"""The request index is derived: deleting it between the rounds of a run changes no row, pays
nothing twice."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pytest

import flows.tasks
from batchline.emulator import Emulator
from batchline.request_index import index_path
from batchline.storage import OutputLayout
from flows.pipeline import batch_pipeline
from tests.support import assert_complete_and_paid_once, write_documents

pytestmark = pytest.mark.usefixtures("prefect_server")


def test_deleting_the_index_between_rounds_keeps_every_row_and_pays_nothing_twice(
    tmp_path: Path,
    emulator_factory: Callable[..., Emulator],
    api_env: Callable[[Emulator], None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    emulator = emulator_factory(seed=5, error_rates={"overloaded_error": 0.2}, expire_rate=0.1)
    api_env(emulator)
    # One source file longer than a shard: its shard is cut into pieces, each its own part.
    docs = write_documents(tmp_path / "docs", 30)
    source = tmp_path / "docs.jsonl"
    source.write_bytes(
        b"".join(orjson.dumps({"id": i, "text": t}) + b"\n" for i, t in docs.items())
    )
    layout = OutputLayout(str(tmp_path / "out"))
    deleted: list[str] = []
    submit_pending = flows.tasks.submit_pending

    def submit_without_index(*args: Any, **kwargs: Any) -> Any:
        # Each round's submit is where the previous round's collected results meet the index.
        if index_path(layout).exists():
            index_path(layout).unlink()
            deleted.append("submit")
        return submit_pending(*args, **kwargs)

    monkeypatch.setattr(flows.tasks, "submit_pending", submit_without_index)
    batch_pipeline(
        source=str(source),
        shard_size=8,
        output=layout.root,
        poll_interval=0.1,
        max_poll_interval=0.5,
        max_attempts=10,
        batch_size=8,
        max_batches_in_flight=2,
    )

    table = pd.read_parquet(layout.url("results"))
    assert_complete_and_paid_once(table, emulator, set(docs))
    assert set(table.status) == {"succeeded"}
    assert (table.attempts > 1).any(), "the faults should have forced retry rounds"
    assert len(deleted) >= 3, deleted  # new rounds and retry rounds ran without their index
    stats = emulator.stats(per_custom_id=False)
    assert stats["requests_submitted"] == int(table.attempts.sum())
