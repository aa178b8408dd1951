"""Many batches: the in-flight cap, concurrent collection, and the same flow on Dask workers."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import anthropic
import pandas as pd
import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

from batchline.config import ConfigError
from batchline.emulator import Emulator
from flows.dask_pipeline import distributed_pipeline
from flows.pipeline import batch_pipeline
from tests.conftest import TEST_API_KEY
from tests.support import logged_pids, write_documents

pytestmark = pytest.mark.usefixtures("prefect_server")


def _batches(emulator: Emulator) -> list[anthropic.types.messages.MessageBatch]:
    client = anthropic.Anthropic(api_key=TEST_API_KEY, base_url=emulator.base_url)
    return sorted(client.messages.batches.list(limit=100), key=lambda b: b.created_at)


def test_no_more_batches_in_flight_than_the_cap(
    tmp_path: Path, emulator_factory: Callable[..., Emulator], api_env: Callable[[Emulator], None]
) -> None:
    emulator = emulator_factory(processing_seconds=0.5)
    api_env(emulator)
    docs = write_documents(tmp_path / "docs", 30)
    batch_pipeline(
        source=str(tmp_path / "docs"),
        output=str(tmp_path / "out"),
        batch_size=7,
        max_batches_in_flight=2,
        poll_interval=0.1,
        max_poll_interval=0.2,
    )
    batches = _batches(emulator)
    assert [b.request_counts.succeeded for b in batches] == [7, 7, 7, 7, 2]
    for i, batch in enumerate(batches):
        # at most two batches were processing at the moment this one was created
        running = [b for b in batches[:i] if b.ended_at is None or b.ended_at > batch.created_at]
        assert len(running) <= 1, (batch.id, [b.id for b in running])
    assert sorted(pd.read_parquet(tmp_path / "out" / "results").doc_id) == sorted(docs)


def test_the_same_flow_on_a_local_dask_cluster_of_processes(
    tmp_path: Path, emulator_factory: Callable[..., Emulator], api_env: Callable[[Emulator], None]
) -> None:
    emulator = emulator_factory(seed=2, error_rates={"overloaded_error": 0.2})
    api_env(emulator)
    docs = write_documents(tmp_path / "docs", 24)
    state = distributed_pipeline(n_workers=2)(
        source=str(tmp_path / "docs"),
        output=str(tmp_path / "out"),
        batch_size=8,
        max_batches_in_flight=3,
        max_attempts=8,
        poll_interval=0.1,
        max_poll_interval=0.2,
        return_state=True,
    )
    assert state.is_completed(), state
    table = pd.read_parquet(tmp_path / "out" / "results")
    assert sorted(table.doc_id) == sorted(docs)
    assert set(table.status) == {"succeeded"}
    # Shards, parts and collects ran in Dask's worker processes, not in this one; the retry
    # subflow's collects too, on the same two workers (a second cluster would add two more).
    run = state.state_details.flow_run_id
    pids = {p for step in ("loaded shard ", "built ", "collected ") for p in logged_pids(run, step)}
    assert 1 <= len(pids) <= 2 and os.getpid() not in pids, pids
    assert table.attempts.max() > 1, "the retry subflow ran"


def test_a_dask_run_without_a_prefect_server_refuses_before_starting_a_cluster() -> None:
    # Each worker would start a server of its own, and its task runs would be lost there.
    with (
        temporary_settings({PREFECT_API_URL: None}),
        pytest.raises(ConfigError, match="PREFECT_API_URL"),
    ):
        distributed_pipeline(n_workers=2)
