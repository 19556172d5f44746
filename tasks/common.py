"""What every task shares: which failures are worth a retry, and how a step becomes a task."""

from __future__ import annotations

from collections.abc import Callable

from mlflow.exceptions import MlflowException
from prefect import Task, task
from prefect.cache_policies import NO_CACHE

from tlpipe.errors import is_expected


def transient_only(task, task_run, state) -> bool:
    """Retry I/O and registry hiccups; never retry bad data or bad settings, nor a folder that
    is read-only or full (retrying cannot change it)."""
    try:
        state.result()
    except (OSError, ConnectionError, TimeoutError, MlflowException) as error:
        return not is_expected(error)
    except BaseException:
        return False
    return False


IO_RETRIES = {"retries": 2, "retry_delay_seconds": 3, "retry_condition_fn": transient_only}


def step_task(step: Callable, name: str | None = None, **options) -> Task:
    """A library function as a Prefect task named after it (or ``name``). Prefect's result
    cache is not used: the library's content-addressed caches also serve partial hits, the
    CLI and the DVC stages, and outputs live at fixed paths that a cached result could not
    vouch for."""
    return task(step, name=name or step.__name__, cache_policy=NO_CACHE, **options)
