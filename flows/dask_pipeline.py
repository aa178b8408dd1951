"""The pipeline on a Dask cluster: mapped tasks (one collect per batch) run on Dask workers.

Point ``BATCHLINE_DASK_ADDRESS`` at a running scheduler (``dask scheduler`` plus ``dask worker``
processes on several machines) or leave it unset for a local multi-process cluster. Every worker
needs the project installed, the same environment (API key, AWS credentials, PREFECT_API_URL) and
an output root they all reach, such as an s3:// prefix: task results are stored under it.

Not named ``distributed.py``: a deployed run loads ``flows/pipeline.py`` by path, which puts
``flows/`` on ``sys.path``, and a module of that name there shadowed Dask's ``distributed``, so
Prefect failed to load its prefect_dask collection ("circular import") in every flow run.
"""

from __future__ import annotations

import os

from prefect import Flow
from prefect_dask.task_runners import DaskTaskRunner

from batchline.build import BuildSummary
from batchline.write import RunSummary
from flows.pipeline import batch_pipeline


def dask_task_runner(address: str | None = None, n_workers: int = 2) -> DaskTaskRunner:
    """A runner on the scheduler at ``address``, or on a new local cluster of processes."""
    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(
        cluster_kwargs={"n_workers": n_workers, "processes": True, "threads_per_worker": 1}
    )


def distributed_pipeline(
    address: str | None = None, n_workers: int = 2
) -> Flow[..., RunSummary | BuildSummary]:
    """``batch_pipeline`` with its tasks on Dask; call it with the pipeline's parameters."""
    return batch_pipeline.with_options(
        name="batchline-pipeline-dask",
        # TaskRunner is generic and invariant in its future type, which Dask's futures subclass.
        task_runner=dask_task_runner(address, n_workers),  # type: ignore[arg-type]
    )


# For deployments (prefect.yaml): the scheduler address comes from the worker's environment.
batch_pipeline_dask = distributed_pipeline(os.environ.get("BATCHLINE_DASK_ADDRESS"))
