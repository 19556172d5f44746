"""Two `tlpipe run`s at once in one project: each registers the weights it trained.

(Before each run had its own outputs folder, the two shared `outputs/`, and a version
tagged as one run's head was seen to hold the other run's weights.)"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from tests.conftest import cli_env, copy_slice, make_project

TLPIPE = str(Path(sys.executable).parent / "tlpipe")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_two_concurrent_runs_each_register_their_own_weights(tmp_path):
    data = copy_slice(tmp_path / "data", {"train": 12, "val": 6})
    project = make_project(tmp_path / "project", data, {
        "finetune": {"epochs": 0}, "registry": {"model_name": "concurrent"}})
    heads = ("logistic", "knn")
    runs = {head: subprocess.Popen(
        [TLPIPE, "run", "--set", f"head.candidates=[{head}]"], cwd=project,
        env=cli_env(tmp_path / f"prefect-{head}"), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True) for head in heads}
    outputs = {head: run.communicate(timeout=600)[0] for head, run in runs.items()}
    for head, run in runs.items():
        assert run.returncode == 0, outputs[head][-3000:]

    uri = f"sqlite:///{project / 'mlflow' / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = client.search_model_versions("name = 'concurrent'")
    assert len(versions) == 2
    registered = {}
    for version in versions:
        run_id = version.tags["pipeline_run_id"]
        local = Path(mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/concurrent/{version.version}", dst_path=tmp_path / run_id))
        (weights,) = local.glob("artifacts/*/model.safetensors")
        trained = project / "runs" / run_id / "model" / "model.safetensors"
        assert sha256(weights) == sha256(trained)  # what this run trained, nothing else
        registered[version.tags["head"].split()[0]] = sha256(weights)
    assert set(registered) == set(heads) and len(set(registered.values())) == 2
