"""The retrain flow on the embedded setup: real DVC on a real git repo, the real training and
promotion flows, the real MLflow store, and a real HTTP server receiving the notifications.

One project tells the whole story in order: first retrain (no champion: promoted), an
unchanged tick (skipped), new images with a deliberately weak setting (refused), an unchanged
tick after that refusal (skipped, not retrained again), broken data (failed, nothing moved).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import psutil
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import SMALL_PARAMS, cli_env, copy_slice, free_port
from tlpipe.ops import tracking
from tlpipe.params_file import deep_merge, load_params
from tlpipe.promotion.retrain import TrainedOn, plan_retrain

WEAK = {"head": {"epochs": 1, "lr": 3e-5}}


def sh(*command: str, cwd: Path) -> str:
    return subprocess.run(command, cwd=cwd, check=True, capture_output=True,
                          text=True).stdout.strip()


def dvc_project(directory: Path, per_class: dict[str, int], extra: dict) -> Path:
    """A git + DVC project with a slice of the demo data under data/raw, committed."""
    directory.mkdir(parents=True)
    copy_slice(directory / "data" / "raw" / "slice", per_class)
    params = deep_merge(SMALL_PARAMS, {"data": {"root": "data/raw/slice"}, **extra})
    (directory / "params.yaml").write_text(yaml.safe_dump(params))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    sh(*git, "init", "-q", cwd=directory)
    sh(sys.executable, "-m", "dvc", "init", "-q", cwd=directory)
    sh(sys.executable, "-m", "dvc", "add", "-q", "data/raw/slice", cwd=directory)
    sh(*git, "add", "-A", cwd=directory)
    sh(*git, "commit", "-qm", "data and params", cwd=directory)
    return directory


class Webhook:
    """A local HTTP server that keeps every JSON body POSTed to it."""

    def __init__(self):
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def webhook():
    hook = Webhook()
    yield hook
    hook.server.shutdown()


def test_plan_says_why():
    old, new = "a" * 32 + ".dir", "b" * 32 + ".dir"
    champion = TrainedOn("3", old, "promoted")
    assert plan_retrain(new, None, None).retrain
    assert not plan_retrain(old, champion, champion).retrain
    changed = plan_retrain(new, champion, champion)
    assert changed.retrain and "aaaaaaaaaaaa -> bbbbbbbbbbbb" in changed.reason
    refused = plan_retrain(new, champion, TrainedOn("4", new, "refused"))
    assert not refused.retrain and "v4" in refused.reason
    assert plan_retrain(new, champion, TrainedOn("4", new, None)).retrain  # never decided
    assert plan_retrain(old, champion, champion, force=True).reason == "forced"
    assert plan_retrain("untracked", champion, champion).retrain


@pytest.mark.slow
def test_retrain_story(tmp_path, prefect_harness, webhook):
    from tlpipe.flows.retrain import retrain_flow

    project = dvc_project(tmp_path / "project", {"train": 16, "val": 16}, {
        "finetune": {"epochs": 0}, "registry": {"model_name": "retrain-story"},
        "retrain": {"notify_url": webhook.url}})
    params = load_params(project / "params.yaml")
    store = tracking.tracking_uri(params.tracking, project)
    # The registry named too: MlflowClient would otherwise take the last mlflow.set_registry_uri.
    client = MlflowClient(store, store)
    pointer = project / "data" / "raw" / "slice.dvc"

    def retrain(**overrides):
        state = retrain_flow(str(project), overrides=overrides or None, return_state=True)
        return state, state.result(raise_on_failure=False)

    state, first = retrain()
    assert state.name == "Promoted" and first["outcome"] == "promoted", first
    assert "no champion yet" in first["reason"] and first["champion"] == "1"
    champion = client.get_model_version_by_alias("retrain-story", "champion")
    assert champion.tags["data_dvc_md5"] == first["data_md5"] == yaml.safe_load(
        pointer.read_text())["outs"][0]["md5"]

    state, second = retrain()
    assert state.name == "Skipped" and second["outcome"] == "skipped", second
    assert "champion v1 was trained on this data version" in second["reason"]
    assert len(client.search_model_versions("name = 'retrain-story'")) == 1

    # New images arrive; a deliberately weak setting makes the gate refuse the new model.
    copy_slice(project / "data" / "raw" / "more", {"train": 22})
    for image in (project / "data" / "raw" / "more").rglob("*.jpg"):
        target = project / "data" / "raw" / "slice" / image.relative_to(
            project / "data" / "raw" / "more")
        if not target.exists():
            shutil.copy2(image, target)
    shutil.rmtree(project / "data" / "raw" / "more")
    state, third = retrain(**WEAK)
    assert state.name == "Refused" and third["outcome"] == "refused", third
    assert "data changed since champion v1" in third["reason"] and third["version"] == "2"
    assert third["data_md5"] != first["data_md5"]
    # The data version was committed before training, so v2's commit names its data.
    assert sh("git", "log", "-1", "--format=%s", cwd=project).startswith("data: data/raw/slice")
    v2 = client.get_model_version("retrain-story", "2")
    assert v2.tags["git_dirty"] == "false" and v2.tags["data_dvc_md5"] == third["data_md5"]
    assert str(client.get_model_version_by_alias("retrain-story", "champion").version) == "1"

    state, fourth = retrain()
    assert state.name == "Skipped" and "v2" in fourth["reason"] and "refused" in fourth["reason"]

    # `tlpipe schedule` serves the same flow: its first tick finds nothing new either.
    serve_scheduled_tick(project, client)

    # Broken data: a file that is no image. Validation fails the flow, and nothing moves.
    (project / "data" / "raw" / "slice" / "train" / "bees" / "broken.jpg").write_bytes(b"oops")
    state, failure = retrain()
    assert state.is_failed(), failure
    assert str(client.get_model_version_by_alias("retrain-story", "champion").version) == "1"
    assert len(client.search_model_versions("name = 'retrain-story'")) == 2

    runs = client.search_runs([client.get_experiment_by_name("tlpipe").experiment_id],
                              "tags.`tlpipe.kind` = 'retrain'", order_by=["start_time ASC"])
    assert [run.data.tags["retrain.outcome"] for run in runs] == [
        "promoted", "skipped", "refused", "skipped", "skipped", "failed"]
    assert [run.info.status for run in runs] == ["FINISHED"] * 5 + ["FAILED"]
    assert runs[-1].data.tags["retrain.reason"].startswith("ValidationFailed")
    assert [body["outcome"] for body in webhook.received] == [
        "promoted", "skipped", "refused", "skipped", "skipped", "failed"]
    assert webhook.received[0]["event"] == "tlpipe.retrain"
    assert webhook.received[2]["decision_run_id"] == runs[2].data.tags["retrain.decision_run_id"]


def serve_scheduled_tick(project: Path, client: MlflowClient) -> None:
    """Run `tlpipe schedule --interval 5` until its first run ends, then stop it with SIGTERM:
    no process it started may outlive it (its own Prefect server included)."""
    experiment = client.get_experiment_by_name("tlpipe").experiment_id
    query = "tags.`tlpipe.kind` = 'retrain' and attributes.status = 'FINISHED'"
    before = len(client.search_runs([experiment], query))
    env = {**cli_env(project / ".prefect"), "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
           "PREFECT_RUNNER_POLL_FREQUENCY": "2"}
    with open(project / "schedule.log", "wb") as log:
        served = subprocess.Popen(
            [sys.executable, "-m", "tlpipe.cli.main", "schedule", "--interval", "5", "--port",
             str(free_port())], cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while len(client.search_runs([experiment], query)) == before:
            assert served.poll() is None, (project / "schedule.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (project / "schedule.log").read_text()[-3000:]
            time.sleep(2)
        started = psutil.Process(served.pid).children(recursive=True)
        assert started  # the Prefect server at least
    finally:
        served.send_signal(signal.SIGTERM)
        served.wait(60)
    time.sleep(1)
    assert [process.pid for process in started if process.is_running()] == []
    newest = client.search_runs([experiment], query, order_by=["start_time DESC"])[0]
    assert newest.data.tags["retrain.outcome"] == "skipped"


def test_failure_is_recorded_even_when_the_webhook_is_down(tmp_path, prefect_harness):
    """A notification that cannot be delivered is reported; it never hides the outcome."""
    from tlpipe.data.validation import ValidationFailed
    from tlpipe.flows.retrain import retrain_flow

    project = dvc_project(tmp_path / "project", {"train": 6, "val": 3}, {
        "registry": {"model_name": "retrain-nohook"},
        "validation": {"min_images_per_class": 50},  # 6 a class: validation refuses the data
        "retrain": {"notify_url": "http://127.0.0.1:9/unreachable", "notify_timeout_s": 1}})
    state = retrain_flow(str(project), return_state=True)
    assert state.is_failed()
    with pytest.raises(ValidationFailed):
        state.result()
    params = load_params(project / "params.yaml")
    store = tracking.tracking_uri(params.tracking, project)
    client = MlflowClient(store, store)
    run = client.search_runs([client.get_experiment_by_name("tlpipe").experiment_id],
                             "tags.`tlpipe.kind` = 'retrain'")[0]
    assert run.info.status == "FAILED"
    assert run.data.tags["retrain.outcome"] == "failed"
    assert run.data.tags["retrain.reason"].startswith("ValidationFailed")
    assert client.search_model_versions("name = 'retrain-nohook'") == []


def test_a_second_retrain_of_the_same_model_does_nothing_and_says_so(tmp_path,
                                                                      prefect_harness):
    """Two `tlpipe retrain` at once (by hand beside a schedule, or on two hosts) trained the
    same data twice; the retrain lock lets one through."""
    from tlpipe.flows.retrain import retrain_flow
    from tlpipe.promotion.lock import registry_lock

    project = dvc_project(tmp_path / "project", {"train": 6, "val": 3},
                          {"registry": {"model_name": "retrain-busy"}})
    params = load_params(project / "params.yaml")
    tracking.configure(params.tracking, project)
    with registry_lock("retrain-busy", wait_s=5, expiry_s=3600, kind="retrain"):  # the first
        state = retrain_flow(str(project), return_state=True)
    outcome = state.result()
    assert outcome["outcome"] == "skipped"
    assert "another retrain of retrain-busy is running" in outcome["reason"]
    store = tracking.tracking_uri(params.tracking, project)
    assert MlflowClient(store, store).search_model_versions("name = 'retrain-busy'") == []
