"""Issue 13: a registered model's stored files are verified before anything in them runs.

Real MLflow (the project's SQLite store and its artifact folder on disk), real registration
through ``log_and_register``, a classifier on the real pretrained backbone, real images, and
the real ``tlpipe predict`` / ``tlpipe verify`` commands. Each test registers its own version
under its own model name and tampers with the files MLflow stored for it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import unquote, urlparse

import mlflow
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from tests.conftest import copy_slice, make_project
from tlpipe import tags
from tlpipe.cli.main import app
from tlpipe.ops import tracking
from tlpipe.params_file import load_params
from tlpipe.registry.integrity import (
    ModelIntegrityError,
    artifact_digests,
    digest_of,
    download_verified,
)
from tlpipe.registry.register import log_and_register
from tlpipe.serving.pyfunc import IMAGE_COLUMN
from tlpipe.training.heads import HeadSpec, build_head
from tlpipe.training.model import WEIGHTS_FILE, Classifier, ModelSpec, save_classifier
from tlpipe.vectors.backbones import load_backbone

ENTRY = "pyfunc_entry.py"  # the script MLflow runs to load a tlpipe pyfunc (models from code)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project with its own MLflow store, and a classifier (pretrained backbone, a linear
    head) saved the way the pipeline saves one."""
    base = tmp_path_factory.mktemp("integrity")
    data = copy_slice(base / "data", {"val": 2})
    root = make_project(base / "project", data)
    params = load_params(root / "params.yaml")
    experiment = tracking.configure(params.tracking, root)
    backbone = load_backbone()
    torch.manual_seed(0)
    head = HeadSpec("linear", backbone.num_features, 2)
    model_dir = save_classifier(
        Classifier(backbone.model, build_head(head)).eval(),
        ModelSpec(backbone.name, backbone.num_features, ["ants", "bees"], head.to_dict(),
                  backbone.preprocessing.to_dict()), base / "model")
    return SimpleNamespace(root=root, data=data, experiment=experiment, model_dir=model_dir,
                           image=sorted(data.rglob("*.jpg"))[0], base=base)


def register(project, name: str) -> str:
    tracking.configure(load_params(project.root / "params.yaml").tracking, project.root)
    with mlflow.start_run(experiment_id=project.experiment, run_name=f"register {name}"):
        version = log_and_register(project.model_dir, name, "challenger", project.image, {})
    return str(version.version)


def stored_folder(name: str, version: str) -> Path:
    """The version's folder in the artifact store, on disk (the project's mlflow/artifacts)."""
    uri = MlflowClient().get_model_version_download_uri(name, version)
    folder = Path(unquote(urlparse(uri).path))
    assert folder.is_dir() and (folder / "MLmodel").is_file(), uri
    return folder


def predict(project, monkeypatch, name: str, version: str):
    monkeypatch.chdir(project.root)
    return CliRunner().invoke(app, ["predict", str(project.image), "--model", name,
                                    "--version", version])


def test_a_registered_version_records_its_digests_and_verifies(project, monkeypatch, tmp_path):
    name = "intact"
    version = register(project, name)
    registered = MlflowClient().get_model_version(name, version)
    stored = artifact_digests(stored_folder(name, version))
    assert registered.tags[tags.ARTIFACTS_SHA256] == digest_of(stored)
    assert ENTRY in stored and f"code/tlpipe/serving/{ENTRY}" in stored  # the code is covered
    assert any(path.endswith(WEIGHTS_FILE) for path in stored)
    recorded = mlflow.artifacts.load_dict(
        f"runs:/{registered.run_id}/model_digests/v{version}.json")
    assert recorded["files"] == stored

    result = predict(project, monkeypatch, name, version)
    assert result.exit_code == 0, result.output
    assert f"{project.image}: " in result.output and ("ants " in result.output
                                                       or "bees " in result.output)

    copy = tmp_path / "served"
    verified = CliRunner().invoke(app, ["verify", f"models:/{name}@challenger", "--to",
                                        str(copy)])
    assert verified.exit_code == 0, verified.output
    assert "OK" in verified.output and registered.tags[tags.ARTIFACTS_SHA256] in verified.output
    assert artifact_digests(copy) == stored
    loaded = mlflow.pyfunc.load_model(str(copy))  # what `mlflow models serve -m DIR` loads
    frame = loaded.predict(pd.DataFrame({IMAGE_COLUMN: [project.image.read_bytes()]}))
    assert list(frame.columns) == ["label", "probability", "prob_ants", "prob_bees"]


def test_one_line_appended_to_the_stored_entry_script_is_refused_and_never_runs(
        project, monkeypatch, tmp_path):
    name = "tampered-code"
    version = register(project, name)
    marker = tmp_path / "pwned"
    entry = stored_folder(name, version) / ENTRY
    with entry.open("a") as handle:
        handle.write(f"\nopen({str(marker)!r}, 'w').write('ran')\n")

    result = predict(project, monkeypatch, name, version)
    assert result.exit_code == 1, result.output
    assert f"models:/{name}/{version}" in result.output
    assert f"changed: {ENTRY}" in result.output
    assert "after registration" in result.output
    assert not marker.exists()  # refused before anything in the store was imported

    copy = tmp_path / "served"
    refused = CliRunner().invoke(app, ["verify", f"models:/{name}/{version}", "--to",
                                       str(copy)])
    assert refused.exit_code == 1 and f"changed: {ENTRY}" in refused.output
    assert not copy.exists() and not list(tmp_path.glob(".served.*"))
    assert not marker.exists()

    # The defect itself: MLflow's own loader runs the appended line.
    mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    assert marker.read_text() == "ran"


def test_replaced_weights_are_refused_naming_the_file(project, monkeypatch):
    name = "tampered-weights"
    version = register(project, name)
    weights = next(stored_folder(name, version).rglob(WEIGHTS_FILE))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one flipped bit in the last tensor
    weights.write_bytes(bytes(data))

    result = predict(project, monkeypatch, name, version)
    assert result.exit_code == 1, result.output
    assert f"changed: {weights.relative_to(stored_folder(name, version)).as_posix()}" \
        in result.output
    with pytest.raises(ModelIntegrityError, match=re.escape(WEIGHTS_FILE)):
        download_verified(name, version, project.base / "weights-check")


def test_an_added_file_and_a_doctored_file_list_are_refused(project, tmp_path):
    name = "tampered-list"
    version = register(project, name)
    folder = stored_folder(name, version)
    (folder / "code" / "tlpipe" / "sitecustomize.py").write_text("import os\n")
    with pytest.raises(ModelIntegrityError, match=re.escape("added: code/tlpipe/sitecustomize.py")):
        download_verified(name, version, tmp_path / "first")

    # Whoever changed the files may rewrite the logged list too: it no longer matches the
    # registry's digest, so it is not believed, and the version is still refused.
    client = MlflowClient()
    run_id = client.get_model_version(name, version).run_id
    listed = Path(client.download_artifacts(run_id, f"model_digests/v{version}.json",
                                            str(tmp_path)))
    payload = json.loads(listed.read_text())
    payload["files"] = artifact_digests(folder)
    client.log_dict(run_id, payload, f"model_digests/v{version}.json")
    with pytest.raises(ModelIntegrityError, match="which files differ is unknown"):
        download_verified(name, version, tmp_path / "second")


def test_a_version_without_recorded_digests_is_refused(project, monkeypatch):
    name = "unrecorded"
    version = register(project, name)
    MlflowClient().delete_model_version_tag(name, version, tags.ARTIFACTS_SHA256)

    result = predict(project, monkeypatch, name, version)
    assert result.exit_code == 1, result.output
    assert f"models:/{name}/{version} has no {tags.ARTIFACTS_SHA256} tag" in result.output
    assert "registered before tlpipe recorded" in result.output
    assert "Retrain" in result.output


def test_a_retried_registration_records_the_digests_it_missed(project, monkeypatch):
    name = "retried"
    tracking.configure(load_params(project.root / "params.yaml").tracking, project.root)
    with mlflow.start_run(experiment_id=project.experiment, run_name="register retried"):
        first = log_and_register(project.model_dir, name, "challenger", project.image, {})
        MlflowClient().delete_model_version_tag(name, first.version, tags.ARTIFACTS_SHA256)
        again = log_and_register(project.model_dir, name, "challenger", project.image, {})
    assert again.version == first.version
    assert again.tags[tags.ARTIFACTS_SHA256] == digest_of(
        artifact_digests(stored_folder(name, str(first.version))))
