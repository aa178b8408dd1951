"""Prefect task retries for API outages longer than the SDK's own retries.

Wait and collect only read from the API, so repeating them costs nothing: 10 s, 20 s, ... 320 s
between tries, each try after the SDK's own retries, ride out an outage of about ten minutes.
Whether a failure is worth retrying is decided by batchline.retry, like everything else.
"""

from __future__ import annotations

from typing import Any

from prefect import Task
from prefect.client.schemas.objects import State, TaskRun
from prefect.tasks import exponential_backoff

from batchline.retry import is_transient_api_failure

OUTAGE_RETRIES = 6
OUTAGE_RETRY_DELAYS = exponential_backoff(backoff_factor=10)


def after_an_outage(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Prefect's retry condition: the task failed on a transient API failure."""
    error = state.result(raise_on_failure=False)
    return isinstance(error, BaseException) and is_transient_api_failure(error)
