"""What every task shares: which failures are worth a retry, and flat MLflow params."""

from __future__ import annotations

from mlflow.exceptions import MlflowException
from pydantic import BaseModel


def transient_only(task, task_run, state) -> bool:
    """Retry I/O and registry hiccups; never retry bad data or bad settings."""
    try:
        state.result()
    except (OSError, ConnectionError, TimeoutError, MlflowException):
        return True
    except BaseException:
        return False
    return False


def flat_params(prefix: str, section: BaseModel) -> dict[str, str]:
    return {f"{prefix}.{key}": str(value) for key, value in section.model_dump(mode="json").items()}
