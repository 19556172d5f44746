"""The team stack on loopback: a Prefect server with a process work pool and a worker, an
MLflow tracking server on PostgreSQL with proxied artifacts, and a directory DVC remote.

Everything lives under ``<project>/.stack``: data, logs, and ``stack.json`` naming every
process started, so ``down`` can stop each one with all its children. ``team.env`` holds the
settings that switch a shell (and the worker) from the embedded defaults to the stack.
PostgreSQL asks for a password, generated on the first ``up`` and kept (0600) in
``.stack/postgres-password``; MLflow gets it through its environment, never a command line.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil
import psycopg2
import psycopg2.extensions

from tlpipe.commands import python_tool, run_command
from tlpipe.errors import TlpipeError
from tlpipe.runtime import runtime_defaults

STACK_DIR = ".stack"
WORK_POOL = "tlpipe"
DVC_REMOTE = "team"
SECRET = "postgres-password"
# In the order they depend on each other: MLflow on PostgreSQL, the worker on the Prefect server.
SERVICES = ("postgres", "mlflow", "prefect-server", "worker")
# Set in the environment of every process `up` starts, which its children inherit: finds
# what a killed server left behind (still holding its port) without trusting a recorded pid.
MARKER = "TLPIPE_STACK_PROCESS"
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
    _stop(tree, first_signal, grace_s)


def _stop(processes: list[psutil.Process], first_signal: int, grace_s: float) -> None:
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(first_signal)
    _, alive = psutil.wait_procs(processes, timeout=grace_s)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(alive, timeout=5)


def _marker(project: Path, name: str) -> str:
    return f"{stack_dir(project)}#{name}"


def _marked(marker: str) -> list[psutil.Process]:
    """The processes carrying ``marker``: a killed server's children are orphans, found by
    no pid we know. (Other users' environments cannot be read; none of them is ours.)"""
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if process.environ().get(MARKER) == marker:
                found.append(process)
    return found


def _alive(pid: int | None) -> bool:
    # A killed child of this process stays a zombie until it is reaped: not running.
    try:
        return pid is not None and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _answers(url: str) -> bool:
    with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:
        return response.status == 200
    return False


def wait_healthy(url: str, pid: int, log: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            raise StackError(f"{url}: the server exited while starting; see {log}:\n"
                             f"{_tail(log)}")
        if _answers(url):
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


# A pg_hba.conf line that lets a user in without a password, as older tlpipe wrote them.
_TRUST_LINE = re.compile(r"^([^#\n]*\s)trust[ \t]*$", re.MULTILINE)


def _read_secret(path: Path) -> str | None:
    return path.read_text().strip() if path.is_file() else None


def _new_secret(path: Path) -> str:
    # Created 0600 (never readable by others, even for a moment), and O_EXCL: never written
    # through a link someone left in its place.
    password = secrets.token_urlsafe(32)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as file:
        file.write(password)
    return password


def _connect(host: str, port: int, password: str | None,
             dbname: str = "postgres") -> psycopg2.extensions.connection:
    return psycopg2.connect(host=host, port=port, user="postgres", password=password,
                            dbname=dbname, connect_timeout=5)


def _trusts(directory: Path) -> bool:
    hba = directory / "data" / "pg_hba.conf"
    return hba.is_file() and _TRUST_LINE.search(hba.read_text()) is not None


def _postmaster_pid(directory: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int((directory / "data" / "postmaster.pid").read_text().split()[0])
    return None


def start_postgres(directory: Path, port: int, host: str, secret: Path) -> None:
    """Start PostgreSQL (initialised on first use) with password authentication, the
    password in ``secret``; create the mlflow database."""
    binaries = postgres_bin()
    data, sockets = directory / "data", directory / "run"
    sockets.mkdir(parents=True, exist_ok=True)
    sockets.chmod(0o700)  # nobody else may connect through the socket, or replace it
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres")
        shutil.chown(sockets, "postgres")
    password = _read_secret(secret)
    if not (data / "PG_VERSION").is_file():
        password = password or _new_secret(secret)
        if os.geteuid() == 0:  # initdb runs as postgres and reads it
            shutil.chown(secret, "postgres")
        _run(_as_postgres_user([str(binaries / "initdb"), "-D", str(data), "-U", "postgres",
                                "--auth=scram-sha-256", f"--pwfile={secret}", "--no-sync"]),
             f"initdb in {data} (the postgres user must be able to reach this folder)")
    # A postmaster just killed stays a zombie until init reaps it, and PostgreSQL refuses to
    # start while its lock file names a process that exists.
    stale, deadline = _postmaster_pid(directory), time.monotonic() + 15
    while stale and psutil.pid_exists(stale) and not _alive(stale) and time.monotonic() < deadline:
        time.sleep(0.2)
    if not _alive(_postmaster_pid(directory)):
        _run(_as_postgres_user([
            str(binaries / "pg_ctl"), "-D", str(data), "-l", str(directory / "postgres.log"),
            "-o", f"-p {port} -k {sockets} -c listen_addresses={host}", "-w", "start"]),
            f"starting PostgreSQL on {host}:{port}")
    if _trusts(directory):  # initialised by an older tlpipe: every local user got in
        password = password or _new_secret(secret)
        _require_password(directory, host, port, password)
    if password is None:
        raise StackError(f"{secret} is missing, and PostgreSQL in {data} asks for that "
                         "password: put the file back, or `tlpipe stack down` and remove "
                         f"{directory} to start afresh (the MLflow runs stored there are lost)")
    try:
        with contextlib.closing(_connect(host, port, password)) as connection:
            connection.autocommit = True  # CREATE DATABASE refuses to run in a transaction
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = 'mlflow'")
                if cursor.fetchone() is None:
                    cursor.execute("CREATE DATABASE mlflow")
    except psycopg2.Error as error:
        raise StackError(f"PostgreSQL on {host}:{port} ({secret}): {error}".strip()) from error


def _require_password(directory: Path, host: str, port: int, password: str) -> None:
    """Give the postgres role ``password`` (sent as a SCRAM verifier, so no log can show it),
    then ask for it on every line of pg_hba.conf that trusted, and reload."""
    try:
        with contextlib.closing(_connect(host, port, None)) as connection:
            connection.autocommit = True
            verifier = psycopg2.extensions.encrypt_password(password, "postgres", connection,
                                                            "scram-sha-256")
            with connection.cursor() as cursor:
                cursor.execute("ALTER ROLE postgres PASSWORD %s", (verifier,))
    except psycopg2.Error as error:
        raise StackError(f"setting a password on PostgreSQL in {directory}: {error}") from error
    hba = directory / "data" / "pg_hba.conf"
    hba.write_text(_TRUST_LINE.sub(r"\1scram-sha-256", hba.read_text()))  # keeps its owner
    _run(_as_postgres_user([str(postgres_bin() / "pg_ctl"), "-D", str(directory / "data"),
                            "reload"]), "reloading PostgreSQL's pg_hba.conf")


def postgres_running(directory: Path) -> bool:
    return (directory / "data" / "postmaster.pid").is_file()


def stop_postgres(directory: Path) -> bool:
    if not postgres_running(directory):
        return False
    _run(_as_postgres_user([str(postgres_bin() / "pg_ctl"), "-D", str(directory / "data"),
                            "-m", "fast", "-w", "stop"]), "stopping PostgreSQL")
    return True


# --- the stack -----------------------------------------------------------------------------

def _health_url(state: StackState, name: str) -> str:
    return f"{state.mlflow_uri}/health" if name == "mlflow" else f"{state.prefect_api}/health"


def _health(project: Path, state: StackState) -> dict[str, bool]:
    """Each service of ``state``: up when its process runs and, for a server, it answers
    (PostgreSQL accepts the password): a server stuck on its port counts as down."""
    root = stack_dir(project)
    pids = {**state.pids, "postgres": _postmaster_pid(root / "postgres")}
    answers = {
        "postgres": lambda: _postgres_answers(state, _read_secret(root / SECRET)),
        "mlflow": lambda: _answers(_health_url(state, "mlflow")),
        "prefect-server": lambda: _answers(_health_url(state, "prefect-server")),
        "worker": lambda: True}
    return {name: _alive(pids[name]) and answers[name]() for name in SERVICES if name in pids}


def _postgres_answers(state: StackState, password: str | None) -> bool:
    if password is None:
        return False
    try:
        _connect(state.host, state.ports.postgres, password).close()
    except psycopg2.Error:
        return False
    return True


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
    if running and _trusts(root / "postgres"):
        raise StackError("this stack was started by an older tlpipe, with a PostgreSQL that "
                         "lets every local user in as superuser: `tlpipe stack down`, then "
                         "`tlpipe stack up`, which sets a password and keeps the stack's runs")
    state = previous if previous and running else StackState(host, ports or Ports())
    down_now = [name for name in SERVICES if not health.get(name)
                and (name != "worker" or worker or name in state.pids)]
    logs = root / "logs"
    try:
        _save_state(project, state)
        if "postgres" in down_now:
            start_postgres(root / "postgres", state.ports.postgres, state.host, root / SECRET)
        # PostgreSQL names its own pid, which changes when it is restarted by other means.
        state.pids["postgres"] = _postmaster_pid(root / "postgres") or 0
        _save_state(project, state)
        servers = [name for name in ("mlflow", "prefect-server") if name in down_now]
        for name in servers:  # started together, then waited for
            # A killed server's children live on, holding its port.
            _stop(_marked(_marker(project, name)), signal.SIGTERM, 10)
            state.pids[name] = (_start_mlflow(project, state) if name == "mlflow" else
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


def _start_mlflow(project: Path, state: StackState) -> int:
    root = stack_dir(project)
    password = urllib.parse.quote(_read_secret(root / SECRET) or "", safe="")
    database = (f"postgresql+psycopg2://postgres:{password}@{state.host}:"
                f"{state.ports.postgres}/mlflow")
    # The URI holds the password: in the environment, which only its owner can read, not on
    # the command line, which `ps` shows to everyone.
    return start_process("mlflow", [
        *python_tool("mlflow"), "server", "--artifacts-destination",
        str(root / "mlflow-artifacts"), "--serve-artifacts", "--host", state.host, "--port",
        str(state.ports.mlflow), "--workers", "1"], root / "logs",
        {"MLFLOW_BACKEND_STORE_URI": database, MARKER: _marker(project, "mlflow")})


def start_worker(project: Path, state: StackState) -> int:
    """A process worker in the project folder, with the team settings in its environment, so
    the flow runs it starts log to the MLflow server, and the project's quiet defaults."""
    defaults = {key: value for key, value in runtime_defaults(project).items()
                if key not in os.environ}
    return start_process("worker", [*python_tool("prefect"), "worker", "start", "--pool",
                                    WORK_POOL, "--type", "process"],
                         stack_dir(project) / "logs",
                         {**defaults, **state.environment(), MARKER: _marker(project, "worker")},
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
        orphans = _marked(_marker(project, name))  # of one that was killed
        _stop(orphans, signal.SIGTERM, 10)
        if running or orphans:
            stopped.append(name)
    if stop_postgres(stack_dir(project) / "postgres"):
        stopped.append("postgres")
    _state_file(project).unlink(missing_ok=True)
    return stopped


def status(project: Path) -> dict[str, bool]:
    """Each service: up (process running and answering) or down."""
    project = project.resolve()
    state = load_state(project)
    return _health(project, state) if state else {}


def start_prefect_server(home: Path, logs: Path, host: str, port: int,
                         marker: str | None = None) -> int:
    return start_process("prefect-server", [*python_tool("prefect"), "server", "start",
                                            "--host", host, "--port", str(port)],
                         logs, {"PREFECT_HOME": str(home), "PREFECT_API_URL": None,
                                MARKER: marker})


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
