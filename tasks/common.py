"""What every task shares: which failures are worth a retry."""

from __future__ import annotations

from mlflow.exceptions import MlflowException


def transient_only(task, task_run, state) -> bool:
    """Retry I/O and registry hiccups; never retry bad data or bad settings."""
    try:
        state.result()
    except (OSError, ConnectionError, TimeoutError, MlflowException):
        return True
    except BaseException:
        return False
    return False
