"""`tlpipe ui`: the project's MLflow and Prefect UIs, real servers on free loopback ports,
stopped with every process they started when the command is told to stop."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.conftest import cli_env, make_project
from tlpipe.ops.processes import answers

pytestmark = pytest.mark.slow


def test_ui_serves_the_projects_stores_until_told_to_stop(tmp_path):
    project = make_project(tmp_path / "project", tmp_path / "data",
                           {"registry": {"model_name": "ui-test"}})
    process = subprocess.Popen([sys.executable, "-m", "tlpipe.cli.main", "ui"], cwd=project,
                               env=cli_env(project / ".prefect"), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    lines, deadline = [], time.monotonic() + 180
    try:
        while not any(line.startswith("Prefect:") for line in lines):
            line = process.stdout.readline()
            assert line and time.monotonic() < deadline, "".join(lines)
            lines.append(line)
        urls = {line.split(":", 1)[0]: line.split(":", 1)[1].strip() for line in lines
                if line.startswith(("MLflow:", "Prefect:"))}
        mlflow = urls["MLflow"].split("/#/")[0]
        assert urls["MLflow"].endswith("#/experiments?workflowType=machine_learning")
        assert answers(f"{mlflow}/health") and answers(f"{urls['Prefect']}/api/health")
        # The project's own store: its experiment, made by the command on the way.
        with urllib.request.urlopen(f"{mlflow}/api/2.0/mlflow/experiments/get-by-name?"
                                    "experiment_name=tlpipe", timeout=10) as response:
            assert json.load(response)["experiment"]["name"] == "tlpipe"
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, "".join(lines) + rest
    assert "stopped" in rest
    assert not answers(f"{mlflow}/health") and not answers(f"{urls['Prefect']}/api/health")
