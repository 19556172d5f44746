"""The MLflow tracking server of the team stack: runs and registry on PostgreSQL, artifacts
proxied by the server into a folder standing in for object storage."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

from tlpipe.commands import python_tool
from tlpipe.ops.processes import environment, start_process
from tlpipe.ops.runtime import SERVER_QUIET


def start_mlflow_server(root: Path, host: str, port: int, postgres_port: int,
                        password: str, marker: dict[str, str]) -> int:
    """``mlflow server`` on PostgreSQL at ``host:postgres_port``, artifacts under ``root``."""
    quoted = urllib.parse.quote(password, safe="")
    database = f"postgresql+psycopg2://postgres:{quoted}@{host}:{postgres_port}/mlflow"
    # The URI holds the password: in the environment, which only its owner can read, not on
    # the command line, which `ps` shows to everyone.
    return start_process("mlflow", [
        *python_tool("mlflow"), "server", "--artifacts-destination",
        str(root / "mlflow-artifacts"), "--serve-artifacts", "--host", host, "--port",
        str(port), "--workers", "1"], root / "logs",
        environment({**SERVER_QUIET, "MLFLOW_BACKEND_STORE_URI": database, **marker}))
