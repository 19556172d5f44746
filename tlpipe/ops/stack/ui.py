"""`tlpipe ui`: this project's MLflow and Prefect UIs on free loopback ports, for as long as
the command runs. No schedule, no team stack: the same stores `tlpipe run` writes (the
MLflow store of params.yaml, the Prefect database in the project's PREFECT_HOME)."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tlpipe.commands import python_tool
from tlpipe.ops.processes import environment, start_process, stop_tree, wait_healthy
from tlpipe.ops.runtime import SERVER_QUIET
from tlpipe.ops.stack.prefect_server import start_prefect_server

HOST = "127.0.0.1"
LOGS = Path(".cache") / "ui"  # in the project


@dataclass(frozen=True)
class Ui:
    mlflow: str  # the runs and the registry, in MLflow's training view
    prefect: str  # the flow runs of every `tlpipe run` here
    logs: Path


def free_port(host: str = HOST) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def ui_servers(project: Path, tracking_uri: str, mlflow_port: int | None = None,
               prefect_port: int | None = None) -> Iterator[Ui]:
    """Both UIs, healthy, for the block; every process they started is stopped after it. A
    tracking server of the team's (an http URI) is linked to, not started."""
    logs = project / LOGS
    mlflow_port, prefect_port = mlflow_port or free_port(), prefect_port or free_port()
    pids = []
    try:
        if tracking_uri.startswith(("http://", "https://")):
            mlflow = tracking_uri
        else:
            pids.append(start_process("mlflow-ui", [
                *python_tool("mlflow"), "ui", "--backend-store-uri", tracking_uri, "--host",
                HOST, "--port", str(mlflow_port), "--workers", "1"], logs,
                environment(SERVER_QUIET)))
            mlflow = f"http://{HOST}:{mlflow_port}"
            wait_healthy(f"{mlflow}/health", pids[-1], logs / "mlflow-ui.log")
        home = Path(os.environ.get("PREFECT_HOME", project / ".prefect"))
        pids.append(start_prefect_server(home, logs, HOST, prefect_port))
        prefect = f"http://{HOST}:{prefect_port}"
        wait_healthy(f"{prefect}/api/health", pids[-1], logs / "prefect-server.log")
        yield Ui(f"{mlflow}/#/experiments?workflowType=machine_learning", prefect, logs)
    finally:
        for pid in pids:
            stop_tree(pid)
