"""The team stack on loopback: a Prefect server with a process work pool and a worker, an
MLflow tracking server on PostgreSQL with proxied artifacts, and a directory DVC remote.

Everything lives under ``<project>/.stack``: data, logs, and ``stack.json`` naming every
process started, so ``down`` can stop each one with all its children. ``team.env`` holds the
settings that switch a shell (and the worker) from the embedded defaults to the stack.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from tlpipe.commands import python_tool, run_command
from tlpipe.errors import TlpipeError
from tlpipe.runtime import runtime_defaults

STACK_DIR = ".stack"
WORK_POOL = "tlpipe"
DVC_REMOTE = "team"
# The Prefect server, the worker and MLflow read these; the rest of the environment passes.
QUIET = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "true",
         "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


class StackError(TlpipeError):
    pass


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
    _state_file(project).write_text(json.dumps(asdict(state), indent=2))


# --- processes -----------------------------------------------------------------------------

def _environment(extra: dict[str, str | None] | None) -> dict[str, str]:
    """This process's environment with ``extra`` on top; a None value removes the key."""
    merged = {**os.environ, **QUIET, **(extra or {})}
    return {key: value for key, value in merged.items() if value is not None}


def start_process(name: str, command: list[str], logs: Path,
                  env: dict[str, str | None] | None = None, cwd: Path | None = None) -> int:
    """Start ``command`` in a session of its own (so it can be stopped with its children),
    output to ``logs/<name>.log``."""
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{name}.log", "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, cwd=cwd, env=_environment(env),
                                   start_new_session=True)
    return process.pid


def stop_tree(pid: int, first_signal: int = signal.SIGTERM, grace_s: float = 20) -> None:
    """Stop ``pid`` and every process below it: ``first_signal``, then SIGKILL after
    ``grace_s``. Children that moved to sessions of their own are found through psutil."""
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for process in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(first_signal)
    _, alive = psutil.wait_procs(tree, timeout=grace_s)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(alive, timeout=5)


def wait_healthy(url: str, pid: int, log: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            raise StackError(f"{url}: the server exited while starting; see {log}:\n"
                             f"{_tail(log)}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:
            if response.status == 200:
                return
        time.sleep(0.5)
    raise StackError(f"{url}: not healthy after {timeout_s:.0f} s; see {log}:\n{_tail(log)}")


def _tail(log: Path, lines: int = 15) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.is_file() else ""


def _run(command: list[str], what: str, env: dict[str, str] | None = None,
         cwd: Path | None = None) -> str:
    return run_command(command, what, StackError, cwd, _environment(env))


# --- PostgreSQL ----------------------------------------------------------------------------

def postgres_bin() -> Path:
    """Debian keeps the server tools off PATH, under /usr/lib/postgresql/<major>/bin; install
    its package when they are missing and we may (root with apt-get)."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if not candidates and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        _run(["apt-get", "update", "-qq"], "apt-get update", env)
        _run(["apt-get", "install", "-y", "-qq", "postgresql"], "installing PostgreSQL", env)
        candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if not candidates:
        raise StackError("PostgreSQL is not installed: `apt-get install postgresql` (Debian), "
                         "or put pg_ctl on PATH")
    return candidates[-1].parent


def _as_postgres_user(command: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; Debian's package creates the `postgres` user.
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def start_postgres(directory: Path, port: int, host: str) -> None:
    binaries = postgres_bin()
    data, sockets = directory / "data", directory / "run"
    sockets.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres")
        shutil.chown(sockets, "postgres")
    if not (data / "PG_VERSION").is_file():
        _run(_as_postgres_user([str(binaries / "initdb"), "-D", str(data), "-A", "trust",
                                "-U", "postgres", "--no-sync"]),
             f"initdb in {data} (the postgres user must be able to reach this folder)")
    already = subprocess.run(_as_postgres_user([str(binaries / "pg_ctl"), "-D", str(data),
                                                 "status"]), capture_output=True).returncode == 0
    if not already:
        _run(_as_postgres_user([
            str(binaries / "pg_ctl"), "-D", str(data), "-l", str(directory / "postgres.log"),
            "-o", f"-p {port} -k {sockets} -c listen_addresses={host}", "-w", "start"]),
            f"starting PostgreSQL on {host}:{port}")
    databases = _run(_as_postgres_user([
        "psql", "-h", host, "-p", str(port), "-U", "postgres", "-tAc",
        "SELECT datname FROM pg_database"]), "listing PostgreSQL databases")
    if "mlflow" not in databases.split():
        _run(_as_postgres_user(["psql", "-h", host, "-p", str(port), "-U", "postgres", "-c",
                                "CREATE DATABASE mlflow"]), "creating the mlflow database")


def postgres_running(directory: Path) -> bool:
    return (directory / "data" / "postmaster.pid").is_file()


def stop_postgres(directory: Path) -> bool:
    if not postgres_running(directory):
        return False
    _run(_as_postgres_user([str(postgres_bin() / "pg_ctl"), "-D", str(directory / "data"),
                            "-m", "fast", "-w", "stop"]), "stopping PostgreSQL")
    return True


# --- the stack -----------------------------------------------------------------------------

def up(project: Path, ports: Ports | None = None, host: str = "127.0.0.1",
       worker: bool = True) -> StackState:
    """Start every service (idempotent: a running stack is left as it is)."""
    project = project.resolve()
    running = load_state(project)
    if running and any(psutil.pid_exists(pid) for pid in running.pids.values()):
        return running
    root, ports = stack_dir(project), ports or Ports()
    logs = root / "logs"
    state = StackState(host, ports)
    try:
        _save_state(project, state)
        start_postgres(root / "postgres", ports.postgres, host)
        database = f"postgresql+psycopg2://postgres@{host}:{ports.postgres}/mlflow"
        state.pids["mlflow"] = start_process("mlflow", [
            *python_tool("mlflow"), "server", "--backend-store-uri", database,
            "--artifacts-destination", str(root / "mlflow-artifacts"), "--serve-artifacts",
            "--host", host, "--port", str(ports.mlflow), "--workers", "1"], logs)
        _save_state(project, state)

        state.pids["prefect-server"] = start_prefect_server(root / "prefect", logs, host,
                                                            ports.prefect)
        _save_state(project, state)

        wait_healthy(f"{state.mlflow_uri}/health", state.pids["mlflow"], logs / "mlflow.log")
        wait_healthy(f"{state.prefect_api}/health", state.pids["prefect-server"],
                     logs / "prefect-server.log")
        _run([*python_tool("prefect"), "work-pool", "create", WORK_POOL, "--type", "process",
              "--overwrite"], f"creating work pool {WORK_POOL!r}", state.environment())
        if worker:
            state.pids["worker"] = start_worker(project, state)
            _save_state(project, state)
        add_dvc_remote(project, root / "dvc-remote")
    except BaseException:
        down(project)
        raise
    write_env_file(project, state)
    return state


def start_worker(project: Path, state: StackState) -> int:
    """A process worker in the project folder, with the team settings in its environment, so
    the flow runs it starts log to the MLflow server, and the project's quiet defaults."""
    defaults = {key: value for key, value in runtime_defaults(project).items()
                if key not in os.environ}
    return start_process("worker", [*python_tool("prefect"), "worker", "start", "--pool",
                                    WORK_POOL, "--type", "process"],
                         stack_dir(project) / "logs", {**defaults, **state.environment()},
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
        if pid and psutil.pid_exists(pid):
            stop_tree(pid, signal.SIGINT if name == "worker" else signal.SIGTERM)
            stopped.append(name)
    if stop_postgres(stack_dir(project) / "postgres"):
        stopped.append("postgres")
    _state_file(project).unlink(missing_ok=True)
    return stopped


def status(project: Path) -> dict[str, bool]:
    state = load_state(project)
    if state is None:
        return {}
    alive = {name: psutil.pid_exists(pid) for name, pid in state.pids.items()}
    return {"postgres": postgres_running(stack_dir(project) / "postgres"), **alive}


def start_prefect_server(home: Path, logs: Path, host: str, port: int) -> int:
    return start_process("prefect-server", [*python_tool("prefect"), "server", "start",
                                            "--host", host, "--port", str(port)],
                         logs, {"PREFECT_HOME": str(home), "PREFECT_API_URL": None})


@contextlib.contextmanager
def prefect_server(home: Path, logs: Path, host: str = "127.0.0.1", port: int = 4200
                   ) -> Iterator[str]:
    """A Prefect server for the duration of the block (schedules need one: the ephemeral
    API does not run the scheduler). Yields its API URL."""
    pid = start_prefect_server(home, logs, host, port)
    try:
        url = f"http://{host}:{port}/api"
        wait_healthy(f"{url}/health", pid, logs / "prefect-server.log")
        yield url
    finally:
        stop_tree(pid)
