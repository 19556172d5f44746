"""The team stack with real servers: PostgreSQL, the MLflow tracking server on it, a Prefect
server with a process work pool and worker, a DVC directory remote. The retrain deployment
from prefect.yaml fires on its own schedule and the worker runs it end to end.

Every process is stopped at the end (``tlpipe stack down``), even when an assertion fails,
and the test then checks that none is left.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import REPO, copy_slice, free_port
from tests.test_retrain import dvc_project, sh
from tlpipe import stack

pytestmark = pytest.mark.slow
INTERVAL_S = 10
RUN_TIMEOUT_S = 300


def finished_runs(api: str) -> list[dict]:
    """The retrain deployment's flow runs that ended (cancelled ticks left out), oldest first."""
    response = httpx.post(f"{api}/flow_runs/filter", json={
        "flows": {"name": {"any_": ["tlpipe-retrain"]}},
        "flow_runs": {"state": {"type": {"any_": ["COMPLETED", "FAILED", "CRASHED"]}}},
        "sort": "EXPECTED_START_TIME_ASC"}, timeout=10)
    response.raise_for_status()
    return response.json()


def cancelled_ticks(api: str) -> int:
    response = httpx.post(f"{api}/flow_runs/count", json={
        "flows": {"name": {"any_": ["tlpipe-retrain"]}},
        "flow_runs": {"state": {"type": {"any_": ["CANCELLED"]}}}}, timeout=10)
    return int(response.json())


def wait_for_run(api: str, count: int, log: Path) -> dict:
    """Wait for the ``count``-th finished scheduled run."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        runs = finished_runs(api)
        if len(runs) >= count:
            return runs[count - 1]
        time.sleep(2)
    worker_log = log.read_text(errors="replace")[-4000:] if log.is_file() else ""
    pytest.fail(f"no {count}th retrain run within {RUN_TIMEOUT_S} s; worker log:\n{worker_log}")


def leftovers(project: Path) -> list[str]:
    found = []
    for process in psutil.process_iter(["pid", "cmdline", "cwd"]):
        command = " ".join(process.info["cmdline"] or [])
        if str(project) in command or str(process.info["cwd"] or "").startswith(str(project)):
            found.append(f"{process.info['pid']}: {command[:120]}")
    return found


@pytest.fixture(scope="module")
def team_project():
    # PostgreSQL runs as the postgres user, which must reach its data folder: pytest's own
    # temporary folders are private to root.
    base = Path(tempfile.mkdtemp(prefix="tlpipe-team-"))
    base.chmod(0o755)
    project = dvc_project(base / "project", {"train": 16, "val": 16}, {
        "finetune": {"epochs": 0}, "registry": {"model_name": "team-ants-bees"}})
    for folder in ("flows", "tasks"):
        shutil.copytree(REPO / folder, project / folder,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(REPO / "prefect.yaml", project / "prefect.yaml")
    sh("git", "add", "-A", cwd=project)
    sh("git", "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "code",
       cwd=project)
    yield project
    shutil.rmtree(base, ignore_errors=True)


def test_scheduled_retrain_on_the_team_stack(team_project, monkeypatch):
    project = team_project
    # The scheduler looks for due runs every 5 s instead of every 60 s, the worker for runs
    # to start every 2 s instead of every 10 s.
    monkeypatch.setenv("PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS", "5")
    monkeypatch.setenv("PREFECT_WORKER_QUERY_SECONDS", "2")
    ports = stack.Ports(free_port(), free_port(), free_port())
    try:
        state = stack.up(project, ports)
        env = {**os.environ, **state.environment()}
        assert stack.status(project) == {"postgres": True, "mlflow": True,
                                         "prefect-server": True, "worker": True}
        assert f"PREFECT_API_URL={state.prefect_api}" in (
            project / ".stack" / "team.env").read_text()

        subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--name",
                        "retrain", "--interval", str(INTERVAL_S)],
                       cwd=project, env=env, check=True, capture_output=True)
        worker_log = project / ".stack" / "logs" / "worker.log"

        first = wait_for_run(state.prefect_api, 1, worker_log)
        assert first["state"]["name"] == "Promoted", first["state"]
        client = MlflowClient(state.mlflow_uri, state.mlflow_uri)
        champion = client.get_model_version_by_alias("team-ants-bees", "champion")
        assert str(champion.version) == "1"

        second = wait_for_run(state.prefect_api, 2, worker_log)
        assert second["state"]["name"] == "Skipped", second["state"]
        assert len(client.search_model_versions("name = 'team-ants-bees'")) == 1

        # New images arrive; the next tick retrains and the gate decides.
        more = copy_slice(project / "incoming", {"train": 24})
        for image in more.rglob("*.jpg"):
            target = project / "data" / "raw" / "slice" / image.relative_to(more)
            if not target.exists():
                shutil.copy2(image, target)
        shutil.rmtree(more)
        seen = len(finished_runs(state.prefect_api))
        third = wait_for_run(state.prefect_api, seen + 1, worker_log)
        if third["state"]["name"] == "Skipped":  # a tick that began before the copy ended
            third = wait_for_run(state.prefect_api, seen + 2, worker_log)
        assert third["state"]["name"] in ("Promoted", "Refused"), third["state"]
        assert {str(v.version) for v in client.search_model_versions(
            "name = 'team-ants-bees'")} == {"1", "2"}
        experiment = client.get_experiment_by_name("tlpipe").experiment_id
        decisions = client.search_runs([experiment], "tags.`tlpipe.kind` = 'promotion'")
        assert [run.data.tags["challenger_version"] for run in decisions] == ["2", "1"]
        outcomes = [run.data.tags["retrain.outcome"] for run in client.search_runs(
            [experiment], "tags.`tlpipe.kind` = 'retrain'", order_by=["start_time ASC"])]
        assert outcomes[:2] == ["promoted", "skipped"]
        assert outcomes[-1] == third["state"]["name"].lower()

        # Everything above went to the servers: runs in PostgreSQL, artifacts behind the
        # MLflow server's proxy, the data versions in the DVC remote; the project's embedded
        # store was never created.
        runs_in_postgres = sh("psql", "-h", "127.0.0.1", "-p", str(ports.postgres), "-U",
                              "postgres", "-d", "mlflow", "-tAc", "SELECT count(*) FROM runs",
                              cwd=project)
        assert int(runs_in_postgres) >= len(outcomes) + len(decisions)
        assert any((project / ".stack" / "mlflow-artifacts").rglob("model.safetensors"))
        assert len(list((project / ".stack" / "dvc-remote").rglob("*"))) > 40
        assert not (project / "mlflow").exists()
        assert cancelled_ticks(state.prefect_api) >= 1  # ticks during the training runs
    finally:
        stopped = stack.down(project)
    assert stopped == ["worker", "prefect-server", "mlflow", "postgres"]
    time.sleep(1)
    assert leftovers(project) == []
