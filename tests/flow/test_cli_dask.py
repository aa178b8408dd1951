"""`batchline run --dask-workers N`: the flow of flows/dask_pipeline.py, on a local Dask cluster."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName

from batchline import cli
from batchline.emulator import Emulator
from tests.support import logged_pids, write_documents

pytestmark = pytest.mark.usefixtures("prefect_server")


def test_dask_workers_runs_the_flows_tasks_on_a_local_cluster(
    tmp_path: Path, emulator_factory: Callable[..., Emulator], api_env: Callable[[Emulator], None]
) -> None:
    api_env(emulator_factory(seed=3))
    docs = write_documents(tmp_path / "docs", 12)
    output = str(tmp_path / "out")
    tokens = ["run", str(tmp_path / "docs"), "--output", output, "--batch-size", "4"]
    tokens += ["--poll-interval", "0.1", "--max-poll-interval", "0.2", "--dask-workers", "2"]
    command, bound, _ = cli._app(cli.run_command()).parse_args(tokens)

    assert command(*bound.args, **bound.kwargs) == 0

    table = pd.read_parquet(Path(output) / "results")
    assert sorted(table.doc_id) == sorted(docs)
    assert set(table.status) == {"succeeded"}
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["batchline-pipeline-dask"]))
        )
    [run] = [r for r in runs if r.parameters.get("output") == output]
    assert run.parameters["batch_size"] == 4
    pids = {
        p for step in ("loaded shard ", "built ", "collected ") for p in logged_pids(run.id, step)
    }
    assert pids and os.getpid() not in pids  # the steps ran in Dask's worker processes
