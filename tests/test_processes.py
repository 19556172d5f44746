"""Real `tlpipe run` processes stopped from outside: Ctrl-C, SIGTERM, kill -9, and a tracking
server that goes away mid-run. Each command runs its own temporary Prefect server (its own
PREFECT_HOME), as a user's does, so what happens to that server is what a user would see."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.conftest import cli_env, copy_slice, free_port, make_project

FINETUNE_FOR_MINUTES = {"finetune": {"epochs": 200, "batch_size": 4, "patience": 500}}


def start_run(tmp_path: Path, extra: dict | None = None) -> tuple[subprocess.Popen, Path]:
    data = copy_slice(tmp_path / "data", {"train": 14, "val": 4})
    project = make_project(tmp_path / "project", data, {
        **FINETUNE_FOR_MINUTES, "registry": {"model_name": "stopped"}, **(extra or {})})
    # A session of its own, as a terminal gives a command: Ctrl-C goes to the whole group.
    process = subprocess.Popen(
        [sys.executable, "-m", "tlpipe.cli.main", "run"], cwd=project,
        env=cli_env(tmp_path / "prefect-home"), start_new_session=True,
        preexec_fn=_default_ctrl_c, stdout=(tmp_path / "out.txt").open("w"),
        stderr=subprocess.STDOUT)
    return process, project


def _default_ctrl_c() -> None:
    """What a shell does for a foreground command: Ctrl-C handled by default. A child inherits
    an ignored or blocked SIGINT, and the test worker can have either from an earlier test in
    the same process (in the full suite this run once finished all 200 epochs, deaf to
    Ctrl-C, while alone it always stopped)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def output(tmp_path: Path) -> str:
    return (tmp_path / "out.txt").read_text(errors="replace")


def wait_for(condition, process: subprocess.Popen, tmp_path: Path, timeout_s: float = 300):
    deadline = time.monotonic() + timeout_s
    while not (found := condition()):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"gave up waiting; the run printed:\n{output(tmp_path)[-3000:]}")
        time.sleep(0.2)
    return found


def temporary_servers(process: subprocess.Popen) -> list[psutil.Process]:
    """The run's Prefect server, once its watchdog is there too (they start a few
    milliseconds apart: a kill in between is the one moment that leaves the server)."""
    children = {child: command_line(child) for child in psutil.Process(process.pid).children()}
    servers = [child for child, command in children.items() if "uvicorn" in command]
    watched = {command[3] for command in children.values() if command[1:2] == ["-c"]}
    return [server for server in servers if str(server.pid) in watched]


def command_line(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:  # ended meanwhile (a git or dvc call, say)
        return []


def fine_tuning(project: Path):
    return list((project / ".cache" / "checkpoints").glob("*/last.pt"))


def extracting_features(project: Path):
    """Mid-run: its stage run opened, the stage's own MLflow calls still to come."""
    return list((project / ".cache" / "features").rglob("*.parquet"))


def gone(server: psutil.Process, within_s: float) -> bool:
    try:
        server.wait(timeout=within_s)
    except psutil.TimeoutExpired:
        return False
    return True


def flow_run_states(tmp_path: Path) -> list[str]:
    database = tmp_path / "prefect-home" / "prefect.db"
    with sqlite3.connect(database) as connection:
        return [row[0] for row in connection.execute("select state_name from flow_run")]


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_a_killed_run_leaves_no_server_behind(tmp_path, stop):
    process, _ = start_run(tmp_path)
    [server] = wait_for(lambda: temporary_servers(process), process, tmp_path)
    process.send_signal(stop)
    process.wait(timeout=60)
    assert gone(server, within_s=15), f"server {server.pid} outlived its run"


def test_ctrl_c_stops_within_seconds_and_the_flow_run_is_cancelled(tmp_path):
    process, project = start_run(tmp_path)
    [server] = wait_for(lambda: temporary_servers(process), process, tmp_path)
    wait_for(lambda: fine_tuning(project), process, tmp_path)
    pressed = time.monotonic()
    os.killpg(process.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
    process.wait(timeout=120)
    stopped_after = time.monotonic() - pressed
    # Before: about 76 s, the server having died with the same Ctrl-C.
    assert stopped_after < 20, f"{stopped_after:.0f} s to stop:\n{output(tmp_path)[-2000:]}"
    assert gone(server, within_s=15)
    assert flow_run_states(tmp_path) == ["Cancelled"]


def test_a_tracking_server_stopped_mid_run_fails_it_in_under_a_minute_with_one_message(
        tmp_path):
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path}/mlflow.db",
         "--default-artifact-root", str(tmp_path / "artifacts"), "--workers", "1"],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: answers(f"http://127.0.0.1:{port}/health"), server, tmp_path, 120)
        process, project = start_run(tmp_path, {  # a chunk of the store every batch
            "tracking": {"tracking_uri": f"http://127.0.0.1:{port}"},
            "features": {"chunk_vectors": 8}})
        wait_for(lambda: extracting_features(project), process, tmp_path)
        stopped = time.monotonic()
        os.killpg(server.pid, signal.SIGKILL)
        process.wait(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    failed_after = time.monotonic() - stopped
    printed = output(tmp_path)
    assert process.returncode == 1
    assert failed_after < 60, f"{failed_after:.0f} s to fail (MLflow's defaults: 994 s)"
    assert "Traceback" not in printed
    message = f"the MLflow tracking server http://127.0.0.1:{port} does not answer"
    assert any(line.startswith(message) for line in printed.splitlines()), printed[-2000:]


def answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2).close()
    except OSError:
        return False
    return True
