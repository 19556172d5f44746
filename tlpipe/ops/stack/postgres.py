"""PostgreSQL for the team stack's MLflow server: initialised on first use with password
authentication (the password generated once, kept 0600), a private socket folder, and the
``mlflow`` database."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import time
from pathlib import Path

import psutil
import psycopg2
import psycopg2.extensions

from tlpipe.commands import run_command
from tlpipe.ops.processes import ServiceError, alive, environment


def _run(command: list[str], what: str, env: dict[str, str] | None = None) -> str:
    return run_command(command, what, ServiceError, env=environment(env))


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
        raise ServiceError("PostgreSQL is not installed: `apt-get install postgresql` (Debian), "
                         "or put pg_ctl on PATH")
    return candidates[-1].parent


def as_postgres_user(command: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; Debian's package creates the `postgres` user.
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


# A pg_hba.conf line that lets a user in without a password, as older tlpipe wrote them.
_TRUST_LINE = re.compile(r"^([^#\n]*\s)trust[ \t]*$", re.MULTILINE)


def read_secret(path: Path) -> str | None:
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


def trusts_local_users(directory: Path) -> bool:
    hba = directory / "data" / "pg_hba.conf"
    return hba.is_file() and _TRUST_LINE.search(hba.read_text()) is not None


def postmaster_pid(directory: Path) -> int | None:
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
    password = read_secret(secret)
    if not (data / "PG_VERSION").is_file():
        password = password or _new_secret(secret)
        if os.geteuid() == 0:  # initdb runs as postgres and reads it
            shutil.chown(secret, "postgres")
        _run(as_postgres_user([str(binaries / "initdb"), "-D", str(data), "-U", "postgres",
                                "--auth=scram-sha-256", f"--pwfile={secret}", "--no-sync"]),
             f"initdb in {data} (the postgres user must be able to reach this folder)")
    # A postmaster just killed stays a zombie until init reaps it, and PostgreSQL refuses to
    # start while its lock file names a process that exists.
    stale, deadline = postmaster_pid(directory), time.monotonic() + 15
    while stale and psutil.pid_exists(stale) and not alive(stale) and time.monotonic() < deadline:
        time.sleep(0.2)
    if not alive(postmaster_pid(directory)):
        _run(as_postgres_user([
            str(binaries / "pg_ctl"), "-D", str(data), "-l", str(directory / "postgres.log"),
            "-o", f"-p {port} -k {sockets} -c listen_addresses={host}", "-w", "start"]),
            f"starting PostgreSQL on {host}:{port}")
    if trusts_local_users(directory):  # initialised by an older tlpipe: every local user got in
        password = password or _new_secret(secret)
        _require_password(directory, host, port, password)
    if password is None:
        raise ServiceError(f"{secret} is missing, and PostgreSQL in {data} asks for that "
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
        raise ServiceError(f"PostgreSQL on {host}:{port} ({secret}): {error}".strip()) from error


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
        raise ServiceError(f"setting a password on PostgreSQL in {directory}: {error}") from error
    hba = directory / "data" / "pg_hba.conf"
    hba.write_text(_TRUST_LINE.sub(r"\1scram-sha-256", hba.read_text()))  # keeps its owner
    _run(as_postgres_user([str(postgres_bin() / "pg_ctl"), "-D", str(directory / "data"),
                            "reload"]), "reloading PostgreSQL's pg_hba.conf")


def postgres_running(directory: Path) -> bool:
    return (directory / "data" / "postmaster.pid").is_file()


def stop_postgres(directory: Path) -> bool:
    if not postgres_running(directory):
        return False
    _run(as_postgres_user([str(postgres_bin() / "pg_ctl"), "-D", str(directory / "data"),
                            "-m", "fast", "-w", "stop"]), "stopping PostgreSQL")
    return True




def answers(host: str, port: int, password: str | None) -> bool:
    if password is None:
        return False
    try:
        _connect(host, port, password).close()
    except psycopg2.Error:
        return False
    return True
