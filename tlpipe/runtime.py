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
