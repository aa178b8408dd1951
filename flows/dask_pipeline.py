"""The pipeline on a Dask cluster: its mapped steps run on the workers, the rest on the driver.

On the workers: one load task per shard of the source, one build task per staged part, one
collect per ended batch (the retry subflow's too), one write task per results part. On the driver
(the process that calls the flow): the plans (the write's reads the request index), the ledger,
every call that creates or pays for a batch, the waits, and the steps that add up and stamp.
Point ``address`` at a running scheduler (``dask scheduler`` plus ``dask worker``
processes on several machines) or leave it out for a local cluster of processes. Every worker
needs the project installed, the same environment (API key, AWS credentials, PREFECT_API_URL)
and an output root they all reach, such as an s3:// prefix: task results are stored under it.

Not named ``distributed.py``: a deployed run loads ``flows/pipeline.py`` by path, which puts
``flows/`` on ``sys.path``, and a module of that name there shadowed Dask's ``distributed``, so
Prefect failed to load its prefect_dask collection ("circular import") in every flow run.
"""

from __future__ import annotations

import os
from typing import Self

from prefect import Flow
from prefect.settings import PREFECT_API_URL
from prefect_dask.task_runners import DaskTaskRunner

from batchline.build import BuildSummary
from batchline.config import ConfigError
from batchline.write import RunSummary
from flows.pipeline import batch_pipeline


class ClusterTaskRunner(DaskTaskRunner):
    """A Dask runner whose copies made while it runs (the retry subflow's) share its cluster.

    Prefect gives a subflow a ``duplicate()`` of its parent's runner. Dask's own duplicate
    repeats the settings, so with a local cluster the retry subflow started a second cluster
    (and its workers) beside the first; this one connects to the running cluster's scheduler.
    """

    def duplicate(self) -> Self:
        if not self._started:  # the flow's template runner: each run gets its own cluster
            return type(self)(
                address=self.address,
                cluster_kwargs=self.cluster_kwargs,
                client_kwargs=self.client_kwargs,
            )
        scheduler = self.client.scheduler
        assert scheduler is not None  # a started client has its scheduler
        return type(self)(address=scheduler.address, client_kwargs=self.client_kwargs)


def dask_task_runner(address: str | None = None, n_workers: int = 2) -> DaskTaskRunner:
    """A runner on the scheduler at ``address``, or on a new local cluster of processes."""
    if address:
        return ClusterTaskRunner(address=address)
    return ClusterTaskRunner(
        cluster_kwargs={"n_workers": n_workers, "processes": True, "threads_per_worker": 1}
    )


def distributed_pipeline(
    address: str | None = None, n_workers: int = 2
) -> Flow[..., RunSummary | BuildSummary]:
    """``batch_pipeline`` with its tasks on Dask; call it with the pipeline's parameters.

    Refuses to run without a Prefect server: without one, this process and every worker would
    each start a temporary server of their own, and the workers' task runs would not be seen.
    """
    if PREFECT_API_URL.value() is None:
        raise ConfigError(
            "a Dask run needs a Prefect server that the driver and every worker reach: start "
            "one (batchline server start, or prefect server start) and set PREFECT_API_URL "
            "in the environment of this process and of each dask worker"
        )
    return _on_dask(address, n_workers)


def _on_dask(address: str | None, n_workers: int) -> Flow[..., RunSummary | BuildSummary]:
    return batch_pipeline.with_options(
        name="batchline-pipeline-dask",
        # TaskRunner is generic and invariant in its future type, which Dask's futures subclass.
        task_runner=dask_task_runner(address, n_workers),  # type: ignore[arg-type]
    )


# For deployments (prefect.yaml): the scheduler address comes from the worker's environment,
# and a deployed run always has its server.
batch_pipeline_dask = _on_dask(os.environ.get("BATCHLINE_DASK_ADDRESS"), n_workers=2)
