"""The read-only commands stay light: listing versions, lineage, the stack's status and --help
import neither torch nor timm (they took 10-15 s when they did). Each command runs in a fresh
interpreter on a real MLflow store holding a version, and the test reads that interpreter's
sys.modules after the command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import cli_env
from tlpipe import tags

MODEL = "light-cli"
HEAVY = ("torch", "timm", "torchvision", "onnxruntime", "prefect")

# Runs one command the way the `tlpipe` script does, then prints what it imported.
RUN_AND_LIST_MODULES = """
import json, sys
from tlpipe.cli.main import app
code = 0
try:
    app(args=sys.argv[1:], prog_name="tlpipe")
except SystemExit as exit:
    code = exit.code
finally:  # printed whatever happened, so the modules of a crash are seen too
    print("MODULES", json.dumps({"code": code,
                                 "loaded": [m for m in sys.modules if "." not in m]}))
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A project whose MLflow store holds one registered version with its pipeline run."""
    project = tmp_path_factory.mktemp("light")
    (project / "mlflow").mkdir()
    store = f"sqlite:///{project}/mlflow/mlflow.db"  # this project's, not the session's
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    experiment = client.create_experiment(
        "tlpipe", artifact_location=(project / "mlflow" / "artifacts").as_uri())
    run = client.create_run(experiment)
    client.log_metric(run.info.run_id, "test_accuracy", 0.875)
    client.set_terminated(run.info.run_id)
    client.create_registered_model(MODEL)
    version = client.create_model_version(MODEL, f"{run.info.artifact_uri}/model",
                                          run.info.run_id,
                                          tags={tags.PIPELINE_RUN_ID: run.info.run_id,
                                                tags.GIT_COMMIT: "abc123",
                                                "test_accuracy": "0.875"})
    client.set_registered_model_alias(MODEL, "champion", version.version)
    (project / "params.yaml").write_text(f"registry:\n  model_name: {MODEL}\n")
    return project


def run_command(project: Path, *args: str) -> tuple[int, set[str], str]:
    finished = subprocess.run([sys.executable, "-c", RUN_AND_LIST_MODULES, *args], cwd=project,
                              env=cli_env(), capture_output=True, text=True, timeout=120)
    output = finished.stdout + finished.stderr
    markers = [line for line in finished.stdout.splitlines() if line.startswith("MODULES")]
    assert markers, output
    result = json.loads(markers[-1].removeprefix("MODULES "))
    return result["code"], set(result["loaded"]), output


@pytest.mark.parametrize("args", [
    ["--help"],
    ["models"],
    ["lineage", f"models:/{MODEL}@champion"],
    ["stack", "status"],
], ids=lambda args: " ".join(args[:1]))
def test_read_only_commands_import_no_torch(project, args):
    code, loaded, output = run_command(project, *args)
    assert "typer" in loaded, loaded  # the list is the command's own
    if args == ["models"]:
        assert code == 0 and "0.875" in output and "champion" in output, output
        # Made without the digest registration records last: as a killed registration leaves it.
        assert "incomplete: no digest" in output, output
        assert "mlflow" in loaded
    if args[0] == "lineage":
        assert code == 0 and "abc123" in output, output
    assert not loaded & set(HEAVY), f"`tlpipe {' '.join(args)}` imported {loaded & set(HEAVY)}"

