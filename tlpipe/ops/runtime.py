"""Process-wide defaults for quiet, offline runs with all state inside the project.

Must run before Prefect or MLflow is imported: both read these variables at import time.
Values already set in the environment win, so a team setup is configuration, not code.
"""

from __future__ import annotations

import os
from pathlib import Path


def runtime_defaults(project_dir: Path) -> dict[str, str]:
    project_dir = Path(project_dir).resolve()
    return {
        "DO_NOT_TRACK": "true",  # MLflow ignores "1"
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # one bar per small model file is noise
        # A tracking server that went away fails a run in about 15 s (backoff 2+4+8 s), not
        # after MLflow's default 7 retries of up to 120 s each (994 s seen).
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "GX_ANALYTICS_ENABLED": "false",
        "DVC_NO_ANALYTICS": "1",
        "PREFECT_HOME": str(project_dir / ".prefect"),
        "PREFECT_LOCAL_STORAGE_PATH": str(project_dir / ".prefect" / "results"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
        "TORCHINDUCTOR_CACHE_DIR": str(project_dir / ".cache" / "inductor"),
        "TQDM_MININTERVAL": "2",
    }


def apply_runtime_defaults(project_dir: Path) -> None:
    for key, value in runtime_defaults(project_dir).items():
        os.environ.setdefault(key, value)


# What the servers of the team stack get in their environment (the rest of it passes): no
# telemetry, and no MLflow job runner competing for the cores.
SERVER_QUIET = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "true",
                "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
