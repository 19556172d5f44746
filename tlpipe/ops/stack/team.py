"""The team stack on loopback: a Prefect server with a process work pool and a worker, an
MLflow tracking server on PostgreSQL with proxied artifacts, and a directory DVC remote.

Everything lives under ``<project>/.stack``: data, logs, and ``stack.json`` naming every
process started, so ``down`` can stop each one with all its children. ``team.env`` holds the
settings that switch a shell (and the worker) from the embedded defaults to the stack.
PostgreSQL asks for a password, generated on the first ``up`` and kept (0600) in
``.stack/postgres-password``; MLflow gets it through its environment, never a command line.
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from tlpipe.commands import python_tool, run_command
from tlpipe.ops.processes import (
    ServiceError,
    alive,
    answers,
    carrying,
    environment,
    start_process,
    stop_all,
    stop_tree,
    wait_healthy,
)
from tlpipe.ops.runtime import SERVER_QUIET, runtime_defaults
from tlpipe.ops.stack import postgres
from tlpipe.ops.stack.mlflow_server import start_mlflow_server
from tlpipe.ops.stack.prefect_server import start_prefect_server

STACK_DIR = ".stack"
WORK_POOL = "tlpipe"
DVC_REMOTE = "team"
SECRET = "postgres-password"
# In the order they depend on each other: MLflow on PostgreSQL, the worker on the Prefect server.
SERVICES = ("postgres", "mlflow", "prefect-server", "worker")
# Set in the environment of every process `up` starts, which its children inherit: finds
# what a killed server left behind (still holding its port) without trusting a recorded pid.
MARKER = "TLPIPE_STACK_PROCESS"


@dataclass
class Ports:
    prefect: int = 4200
    mlflow: int = 5000
    postgres: int = 55432


@dataclass
class StackState:
    host: str
    ports: Ports
    pids: dict[str, int] = field(default_factory=dict)
    # What this `up` started again on a stack that was running; not saved.
    restarted: list[str] = field(default_factory=list, compare=False)

    @property
    def prefect_api(self) -> str:
        return f"http://{self.host}:{self.ports.prefect}/api"

    @property
    def mlflow_uri(self) -> str:
        return f"http://{self.host}:{self.ports.mlflow}"

    def environment(self) -> dict[str, str]:
        return {"PREFECT_API_URL": self.prefect_api, "MLFLOW_TRACKING_URI": self.mlflow_uri}


def stack_dir(project: Path) -> Path:
    return project.resolve() / STACK_DIR


def _state_file(project: Path) -> Path:
    return stack_dir(project) / "stack.json"


def load_state(project: Path) -> StackState | None:
    path = _state_file(project)
    if not path.is_file():
        return None
    raw = json.loads(path.read_text())
    return StackState(raw["host"], Ports(**raw["ports"]), raw["pids"])


def _save_state(project: Path, state: StackState) -> None:
    _state_file(project).parent.mkdir(parents=True, exist_ok=True)
    saved = {key: value for key, value in asdict(state).items() if key != "restarted"}
    _state_file(project).write_text(json.dumps(saved, indent=2))


def _marker(project: Path, name: str) -> dict[str, str]:
    return {MARKER: f"{stack_dir(project)}#{name}"}


def _left_behind(project: Path, name: str) -> list[psutil.Process]:
    """What a killed ``name`` left running (its children, still holding its port)."""
    return carrying(MARKER, _marker(project, name)[MARKER])


def _run(command: list[str], what: str, env: dict[str, str] | None = None,
         cwd: Path | None = None) -> str:
    return run_command(command, what, ServiceError, cwd,
                       environment({**SERVER_QUIET, **(env or {})}))


def _health_url(state: StackState, name: str) -> str:
    return f"{state.mlflow_uri}/health" if name == "mlflow" else f"{state.prefect_api}/health"


def _health(project: Path, state: StackState) -> dict[str, bool]:
    """Each service of ``state``: up when its process runs and, for a server, it answers
    (PostgreSQL accepts the password): a server stuck on its port counts as down."""
    root = stack_dir(project)
    pids = {**state.pids, "postgres": postgres.postmaster_pid(root / "postgres")}
    answering = {
        "postgres": lambda: postgres.answers(state.host, state.ports.postgres,
                                             postgres.read_secret(root / SECRET)),
        "mlflow": lambda: answers(_health_url(state, "mlflow")),
        "prefect-server": lambda: answers(_health_url(state, "prefect-server")),
        "worker": lambda: True}
    return {name: alive(pids[name]) and answering[name]() for name in SERVICES if name in pids}


def up(project: Path, ports: Ports | None = None, host: str = "127.0.0.1",
       worker: bool = True) -> StackState:
    """Start what is down: on a new (or wholly stopped) stack everything; on a running one
    each service whose process died or stopped answering, in dependency order, keeping the
    others (``state.restarted`` names those started again). ``ports`` and ``host`` apply to
    a new stack only: a running one keeps its own."""
    project = project.resolve()
    root, previous = stack_dir(project), load_state(project)
    health = _health(project, previous) if previous else {}
    running = previous is not None and any(health.values())
    if running and postgres.trusts_local_users(root / "postgres"):
        raise ServiceError("this stack was started by an older tlpipe, with a PostgreSQL that "
                         "lets every local user in as superuser: `tlpipe stack down`, then "
                         "`tlpipe stack up`, which sets a password and keeps the stack's runs")
    state = previous if previous and running else StackState(host, ports or Ports())
    down_now = [name for name in SERVICES if not health.get(name)
                and (name != "worker" or worker or name in state.pids)]
    logs = root / "logs"
    try:
        _save_state(project, state)
        if "postgres" in down_now:
            postgres.start_postgres(root / "postgres", state.ports.postgres, state.host,
                                    root / SECRET)
        # PostgreSQL names its own pid, which changes when it is restarted by other means.
        state.pids["postgres"] = postgres.postmaster_pid(root / "postgres") or 0
        _save_state(project, state)
        servers = [name for name in ("mlflow", "prefect-server") if name in down_now]
        for name in servers:  # started together, then waited for
            # A killed server's children live on, holding its port.
            stop_all(_left_behind(project, name), signal.SIGTERM, 10)
            state.pids[name] = (_start_mlflow(root, state, _marker(project, name))
                                if name == "mlflow" else
                                start_prefect_server(root / "prefect", logs, state.host,
                                                     state.ports.prefect,
                                                     _marker(project, name)))
            _save_state(project, state)
        for name in servers:
            wait_healthy(_health_url(state, name), state.pids[name], logs / f"{name}.log")
        if "prefect-server" in servers:
            _run([*python_tool("prefect"), "work-pool", "create", WORK_POOL, "--type",
                  "process", "--overwrite"], f"creating work pool {WORK_POOL!r}",
                 state.environment())
        if "worker" in down_now:
            state.pids["worker"] = start_worker(project, state)
            _save_state(project, state)
        add_dvc_remote(project, root / "dvc-remote")
    except BaseException:
        if not running:  # a half-started stack goes; a running one keeps what is up
            down(project)
        raise
    state.restarted = down_now if running else []
    write_env_file(project, state)
    return state


def _start_mlflow(root: Path, state: StackState, marker: dict[str, str]) -> int:
    return start_mlflow_server(root, state.host, state.ports.mlflow, state.ports.postgres,
                               postgres.read_secret(root / SECRET) or "", marker)


def start_worker(project: Path, state: StackState) -> int:
    """A process worker in the project folder, with the team settings in its environment, so
    the flow runs it starts log to the MLflow server, and the project's quiet defaults."""
    defaults = {key: value for key, value in runtime_defaults(project).items()
                if key not in os.environ}
    return start_process("worker", [*python_tool("prefect"), "worker", "start", "--pool",
                                    WORK_POOL, "--type", "process"],
                         stack_dir(project) / "logs",
                         environment({**SERVER_QUIET, **defaults, **state.environment(),
                                      **_marker(project, "worker")}),
                         cwd=project)


def add_dvc_remote(project: Path, directory: Path) -> None:
    """A directory standing in for object storage, as the project's default remote (in
    .dvc/config.local, which git ignores: the shared config stays as it is)."""
    if not (project / ".dvc").is_dir():
        return
    directory.mkdir(parents=True, exist_ok=True)
    _run([*python_tool("dvc"), "remote", "add", "--local", "--default", "--force",
          DVC_REMOTE, str(directory)], "adding the DVC remote", cwd=project)


def write_env_file(project: Path, state: StackState) -> Path:
    path = stack_dir(project) / "team.env"
    lines = ["# `source .stack/team.env` switches this shell to the team stack."]
    lines += [f"export {key}={value}" for key, value in state.environment().items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def down(project: Path) -> list[str]:
    """Stop the worker first (it stops on SIGINT), then the servers, then PostgreSQL."""
    project = project.resolve()
    state = load_state(project)
    if state is None:
        return []
    stopped = []
    for name in ("worker", "prefect-server", "mlflow"):
        pid = state.pids.get(name)
        running = bool(pid) and psutil.pid_exists(pid)
        if running:
            stop_tree(pid, signal.SIGINT if name == "worker" else signal.SIGTERM)
        orphans = _left_behind(project, name)  # of one that was killed
        stop_all(orphans, signal.SIGTERM, 10)
        if running or orphans:
            stopped.append(name)
    if postgres.stop_postgres(stack_dir(project) / "postgres"):
        stopped.append("postgres")
    _state_file(project).unlink(missing_ok=True)
    return stopped


def status(project: Path) -> dict[str, bool]:
    """Each service: up (process running and answering) or down."""
    project = project.resolve()
    state = load_state(project)
    return _health(project, state) if state else {}
