"""Processes that serve: started in a session of their own, waited for until healthy, stopped
with every child they made."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import psutil

from tlpipe.errors import TlpipeError


class ServiceError(TlpipeError):
    """A server that would not start, answer or stop; the message names its log."""


def environment(extra: dict[str, str | None] | None = None) -> dict[str, str]:
    """This process's environment with ``extra`` on top; a None value removes the key."""
    merged = {**os.environ, **(extra or {})}
    return {key: value for key, value in merged.items() if value is not None}


def start_process(name: str, command: list[str], logs: Path, env: dict[str, str] | None = None,
                  cwd: Path | None = None) -> int:
    """Start ``command`` in a session of its own (so it can be stopped with its children),
    output to ``logs/<name>.log``; its pid."""
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{name}.log", "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, cwd=cwd, env=env,
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
    stop_all(tree, first_signal, grace_s)


def stop_all(processes: list[psutil.Process], first_signal: int, grace_s: float) -> None:
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(first_signal)
    _, alive = psutil.wait_procs(processes, timeout=grace_s)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(alive, timeout=5)


def carrying(variable: str, value: str) -> list[psutil.Process]:
    """The processes whose environment sets ``variable`` to ``value``: a killed server's
    children are orphans, found by no pid we know. (Other users' environments cannot be read;
    none of them is ours.)"""
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if process.environ().get(variable) == value:
                found.append(process)
    return found


def alive(pid: int | None) -> bool:
    # A killed child of this process stays a zombie until it is reaped: not running.
    try:
        return pid is not None and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def answers(url: str) -> bool:
    with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:
        return response.status == 200
    return False


def wait_healthy(url: str, pid: int, log: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive(pid):
            raise ServiceError(f"{url}: the server exited while starting; see {log}:\n"
                               f"{log_tail(log)}")
        if answers(url):
            return
        time.sleep(0.5)
    raise ServiceError(f"{url}: not healthy after {timeout_s:.0f} s; see {log}:\n{log_tail(log)}")


def log_tail(log: Path, lines: int = 15) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.is_file() else ""
