"""A real `tlpipe run` process killed mid-fine-tune, then run again."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import cli_env, copy_slice, make_project
from tlpipe.ops import tracking
from tlpipe.params_file import load_params


def _tlpipe(project: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tlpipe.cli.main", "run"], cwd=project,
                            env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_killed_run_is_marked_failed_and_the_next_run_resumes_fine_tuning(tmp_path):
    data = copy_slice(tmp_path / "data", {"train": 14, "val": 4})
    project = make_project(tmp_path / "project", data, {
        "finetune": {"epochs": 3, "batch_size": 4, "patience": 5},
        "registry": {"model_name": "kill-resume"},
    })
    process = _tlpipe(project)
    deadline = time.monotonic() + 300
    while not list((project / ".cache" / "checkpoints").glob("*/last.pt")):
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"no checkpoint before the run ended:\n{process.stdout.read()}")
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) != 0

    rerun = _tlpipe(project)
    output, _ = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, output
    assert "finetune: resumed after epoch 1" in output

    params = load_params(project / "params.yaml")
    tracking.configure(params.tracking, project)
    client = MlflowClient()
    experiment = client.get_experiment_by_name(params.tracking.experiment).experiment_id
    runs = client.search_runs([experiment], "tags.`tlpipe.kind` = 'pipeline'",
                              order_by=["attributes.start_time ASC"])
    assert [r.info.status for r in runs] == ["FAILED", "FINISHED"]
    assert runs[0].data.tags["failure_reason"]
    finetune = client.search_runs(
        [experiment], f"tags.`mlflow.parentRunId` = '{runs[1].info.run_id}' "
                      "and tags.`tlpipe.stage` = 'finetune'")[0]
    assert finetune.data.tags["resumed_from_epoch"] == "0"
    assert finetune.data.metrics["epochs_run"] == 2
