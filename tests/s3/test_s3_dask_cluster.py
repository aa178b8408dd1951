"""The pipeline on a Dask cluster of separate processes, as on several machines, over S3.

A ``dask scheduler`` and two ``dask worker`` processes are started apart, each with only the
environment a machine of the cluster would have: the Prefect server's address, the S3 endpoint
and credentials, the API's address and key. The driver (this process) keeps the ledger and the
API calls; loading, building, collecting and writing the results parts run on the workers, which
are long-lived: they keep their filesystem instances from one round and one run to the next.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import s3fs
from distributed import Client
from prefect.settings import PREFECT_API_URL

from batchline.emulator import Emulator
from batchline.emulator.responder import QUOTE_CHARS
from deployments.local import free_port, prefect_env
from flows.dask_pipeline import distributed_pipeline
from tests.s3.conftest import BUCKET
from tests.support import assert_complete_and_paid_once, logged_pids

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_server")]

DASK = str(Path(sys.executable).with_name("dask"))


@contextmanager
def dask_cluster(env: dict[str, str], logs: Path, workers: int = 2) -> Iterator[dict[str, int]]:
    """A scheduler and ``workers`` single-process workers; yields its address → worker pid map.

    Every process is ended when the block ends, whatever happened in it.
    """
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    commands = [
        [DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
        *(
            [
                DASK,
                "worker",
                address,
                "--name",
                f"machine-{i}",
                "--nthreads",
                "2",
                "--no-nanny",
                "--no-dashboard",
                "--local-directory",
                str(logs / f"machine-{i}"),
            ]
            for i in range(workers)
        ),
    ]
    started: list[subprocess.Popen[bytes]] = []
    try:
        for number, command in enumerate(commands):
            with (logs / f"dask-{number}.log").open("wb") as log:
                started.append(
                    subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
                )
        with Client(address, timeout=60) as client:
            client.wait_for_workers(workers, timeout=120)
            pids = client.run(os.getpid)
        yield {address: pids}
    finally:
        for process in reversed(started):
            process.terminate()
        for process in started:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _upload_documents(fs: s3fs.S3FileSystem, count: int) -> dict[str, str]:
    docs = {}
    for i in range(count):
        text = f"Document {i} of the cluster run, about topic {i % 5}."
        fs.pipe(f"{BUCKET}/in/doc-{i:03d}.txt", text.encode())
        docs[f"doc-{i:03d}"] = text
    return docs


@pytest.mark.slow
def test_a_cluster_of_separate_processes_loads_builds_collects_and_writes_on_its_workers(
    s3: s3fs.S3FileSystem,
    storage_options: dict[str, Any],
    tmp_path: Path,
    emulator_factory: Callable[..., Emulator],
    api_env: Callable[[Emulator], None],
) -> None:
    emulator = emulator_factory(seed=5, expire_rate=0.2, error_rates={"overloaded_error": 0.15})
    api_env(emulator)
    docs = _upload_documents(s3, 40)
    output = f"s3://{BUCKET}/out"
    params = {
        "source": f"s3://{BUCKET}/in",
        "output": output,
        "shard_size": 10,
        "batch_size": 8,
        "max_batches_in_flight": 3,
        "max_attempts": 8,
        "poll_interval": 0.1,
        "max_poll_interval": 0.3,
    }
    # What each machine of the cluster gets: no PREFECT_ setting but the server's address.
    env = prefect_env(tmp_path / "worker-home", PREFECT_API_URL=str(PREFECT_API_URL.value()))

    with dask_cluster(env, tmp_path) as cluster:
        ((address, workers),) = cluster.items()
        state = distributed_pipeline(address)(**params, return_state=True)
        assert state.is_completed(), state
        table = pd.read_parquet(f"{output}/results", storage_options=storage_options)
        assert_complete_and_paid_once(table, emulator, set(docs))
        assert set(table.status) == {"succeeded"}
        assert (table.attempts > 1).any(), "a second round retried expired or errored requests"
        for row in table.itertuples():
            assert row.text.startswith(f"Emulated reply to: {docs[row.doc_id][:QUOTE_CHARS]}")

        # Each step that may run anywhere ran in the workers' processes, never in this one;
        # the collects of the retry subflow too, so it used the same cluster.
        run = state.state_details.flow_run_id
        assert run is not None
        for step in ("loaded shard ", "built part-", "collected ", "wrote results part "):
            pids = logged_pids(run, step)
            assert pids and pids <= set(workers.values()), (step, pids, workers)
        assert len(logged_pids(run, "collected ")) == 2, "both workers collected"
        # What the driver handed the write parts through the store is gone once they are done.
        s3.invalidate_cache()
        assert [p for p in s3.ls(f"{BUCKET}/out/results") if "/.answers-" in p] == []

        # A second run on the same workers, whose filesystems have listed the output before,
        # sees everything the first one wrote: it pays for nothing and writes the same table.
        submitted = emulator.stats()["requests_submitted"]
        again = distributed_pipeline(address)(**params, return_state=True)
        assert again.is_completed(), again
        assert emulator.stats()["requests_submitted"] == submitted
        rerun = pd.read_parquet(f"{output}/results", storage_options=storage_options)
        assert sorted(rerun.custom_id) == sorted(table.custom_id)
