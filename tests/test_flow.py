"""The real training flow, end to end: Prefect, MLflow on SQLite, GX, PyTorch, real images."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from typer.testing import CliRunner

from tests.conftest import copy_slice, make_project
from tlpipe.audit.findings import AuditFailed
from tlpipe.cli.main import app
from tlpipe.data.validation import ValidationFailed
from tlpipe.flows.promote import promote_flow
from tlpipe.flows.train import train_flow
from tlpipe.ops import tracking
from tlpipe.params_file import load_params
from tlpipe.pipeline import STAGES
from tlpipe.serving.pyfunc import IMAGE_COLUMN
from tlpipe.stages import evaluate, finetune
from tlpipe.training.model import load_classifier
from tlpipe.vectors.backbones import BackboneError, backbone_for


@pytest.fixture(scope="module")
def trained(tmp_path_factory, small_data, prefect_harness):
    project = make_project(tmp_path_factory.mktemp("project"), small_data)
    params = load_params(project / "params.yaml")
    first = train_flow(params, str(project))
    second = train_flow(params, str(project))
    tracking.configure(params.tracking, project)
    return project, params, first, second


def test_registers_a_challenger_traceable_to_code_data_and_params(trained):
    _, params, first, second = trained
    client = MlflowClient()
    assert (int(first["model"]["version"]), int(second["model"]["version"])) == (1, 2)
    challenger = client.get_model_version_by_alias(params.registry.model_name, "challenger")
    assert int(challenger.version) == 2
    tags = client.get_model_version(params.registry.model_name, first["model"]["version"]).tags
    for key in ("git_commit", "git_dirty", "params_hash", "data_fingerprint", "backbone",
                "weights_digest", "prefect_flow_run_id", "pipeline_run_id", "test_accuracy"):
        assert tags.get(key), f"model version lacks tag {key}"
    assert tags["params_hash"] == params.digest()
    assert tags["backbone"] == "efficientnet_lite0"
    assert len(tags["git_commit"]) == 40
    # The tiny slice (12 test images) still separates ants from bees with real weights.
    assert float(tags["test_accuracy"]) >= 0.75


def test_parent_run_holds_headline_metrics_tags_and_one_child_per_stage(trained):
    _, _, first, _ = trained
    client = MlflowClient()
    parent = client.get_run(first["run_id"])
    assert parent.info.status == "FINISHED"
    for metric in ("test_accuracy", "test_macro_f1", "test_ece", "test_recall_ants"):
        assert metric in parent.data.metrics
    assert parent.data.tags["data_fingerprint"]
    assert parent.data.tags["git_commit"]
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{first['run_id']}'")
    stages = sorted(run.data.tags["tlpipe.stage"] for run in children)
    assert stages == sorted(["manifest", "validate", "augment", "features", "audit", "head",
                             "finetune", "evaluate", "register"])
    in_order = sorted(children, key=lambda run: run.info.start_time)
    assert [run.data.tags["tlpipe.stage"] for run in in_order] == [s.name for s in STAGES]
    assert all(run.info.status == "FINISHED" for run in children)
    artifacts = {a.path for a in client.list_artifacts(first["run_id"])}
    assert {"validation", "augment", "audit", "evaluation", "model_card.md"} <= artifacts
    audit = {a.path for a in client.list_artifacts(first["run_id"], "audit")}
    assert {"audit/report.html", "audit/images.parquet", "audit/preprocessing.json"} <= audit
    evaluation = {a.path for a in client.list_artifacts(first["run_id"], "evaluation")}
    assert {"evaluation/confusion_matrix.png", "evaluation/learning_curves.png",
            "evaluation/metrics.json"} <= evaluation
    finetuned = next(r for r in children if r.data.tags["tlpipe.stage"] == "finetune")
    history = client.get_metric_history(finetuned.info.run_id, "finetune_val_loss")
    assert len(history) == 1  # one fine-tune epoch in these params


def test_the_ladder_choice_and_the_fine_tune_verdict_are_recorded(trained):
    _, params, first, _ = trained
    client = MlflowClient()
    chosen = next(row for row in first["head"]["leaderboard"] if row["chosen"])
    assert chosen["candidate"] == first["head"]["chosen"]
    parent = client.get_run(first["run_id"])
    assert parent.data.tags["head"] == chosen["candidate"]
    assert parent.data.tags["finetune"].startswith(first["finetune"]["verdict"] + ": ")
    head_run = client.search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{first['run_id']}' "
                                     "and tags.`tlpipe.stage` = 'head'")[0]
    assert head_run.data.tags["head.chosen"] == chosen["candidate"]
    assert "leaderboard.json" in {a.path for a in client.list_artifacts(head_run.info.run_id)}
    version = client.get_model_version(params.registry.model_name, first["model"]["version"])
    assert version.tags["head"] == chosen["candidate"]


def test_second_run_reuses_every_cached_feature(trained):
    _, _, first, second = trained
    assert first["features"]["computed"] > 0
    assert second["features"]["computed"] == second["features"]["choice_computed"] == 0
    assert first["features"]["choice_computed"] > 0  # eval_resize: auto, both options scored
    assert second["features"]["cached"] == (first["features"]["computed"]
                                            + first["features"]["cached"])


def test_each_run_writes_its_own_outputs_folder_and_leaves_the_work_tree_clean(trained):
    project, _, first, second = trained
    assert Path(first["outputs"]) == project / "runs" / first["run_id"]
    assert Path(second["outputs"]) == project / "runs" / second["run_id"]
    assert not (project / "outputs").exists()  # the DVC pipeline's, untouched by flow runs
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                            cwd=project, capture_output=True, text=True, check=True).stdout
    assert status == ""
    run = MlflowClient().get_run(second["run_id"])
    assert run.data.tags["git_dirty"] == "false" and run.data.tags["git_changed"] == "-"
    assert second["uncommitted"] is None


def test_lineage_names_the_uncommitted_files(tmp_path):
    from tlpipe.registry.lineage import git_state

    project = make_project(tmp_path / "project", tmp_path / "data")
    (project / "params.yaml").write_text("seed: 7\n")  # edited to fix a setting, not committed
    (project / "notes.txt").write_text("untracked files do not count\n")
    state = git_state(project)
    assert state["git_dirty"] == "true" and state["git_changed"] == "params.yaml"
    assert git_state(tmp_path) == {"git_commit": "unknown", "git_dirty": "unknown",
                                   "git_changed": "unknown"}  # not a repository


def test_gif_placeholder_is_quarantined_and_reported(trained):
    _, _, first, _ = trained
    report = (Path(first["outputs"]) / "validation" / "report.md").read_text()
    assert "QUARANTINED" in report and "train/ants/imageNotFound.gif" in report
    kept = pd.read_parquet(Path(first["outputs"]) / "validation" / "validated.parquet")
    assert "train/ants/imageNotFound.gif" not in set(kept["path"])


def test_registered_model_loads_without_pickles_and_classifies_real_images(trained, demo_root):
    _, params, _, _ = trained
    model = mlflow.pyfunc.load_model(f"models:/{params.registry.model_name}@challenger")
    images = [demo_root / "val" / "ants" / "10308379_1b6c72e180.jpg",
              demo_root / "val" / "bees" / "1032546534_06907fe3b3.jpg"]
    frame = model.predict(pd.DataFrame({IMAGE_COLUMN: [p.read_bytes() for p in images]}))
    assert list(frame["label"]) == ["ants", "bees"]
    assert frame[["prob_ants", "prob_bees"]].sum(axis=1).round(5).eq(1).all()
    assert model.metadata.signature.inputs.input_names() == [IMAGE_COLUMN]
    assert "python_model.pkl" not in str(model.metadata.to_dict())


def test_zero_finetune_epochs_registers_the_head_on_the_frozen_backbone(trained):
    project, params, first, _ = trained
    head_only = params.model_copy(update={
        "finetune": params.finetune.model_copy(update={"epochs": 0}),
        "outputs_dir": project / "outputs-head-only"})
    shutil.copytree(first["outputs"], head_only.outputs_dir)
    result = finetune.compute(head_only, project)
    assert result["epochs_run"] == 0 and result["history"] == []
    model, _ = load_classifier(Path(result["model_dir"]))
    backbone = backbone_for(params.backbone, project)
    assert torch.equal(model.backbone.conv_head.weight, backbone.model.conv_head.weight)
    assert evaluate.compute(head_only, project)["accuracy"] >= 0.75


def test_cli_predict_prints_top_labels_from_the_registry(trained, demo_root, monkeypatch):
    project, *_ = trained
    monkeypatch.chdir(project)
    bee = demo_root / "val" / "bees" / "1032546534_06907fe3b3.jpg"
    result = CliRunner().invoke(app, ["predict", str(bee), "--top-k", "1", "--alias",
                                      "challenger"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1].startswith(f"{bee}: bees 0.")
    missing = CliRunner().invoke(app, ["predict", str(bee), "--alias", "nonexistent"])
    assert missing.exit_code == 1 and "nonexistent" in missing.output


def _failing_run(tmp_path, extra: dict, error: type[Exception], match: str,
                 break_data=lambda data: None):
    """Run the flow on a small slice that must fail; return the project and its one run."""
    data = copy_slice(tmp_path / "data", {"train": 6, "val": 3})
    break_data(data)
    project = make_project(tmp_path / "project", data, extra)
    params = load_params(project / "params.yaml")
    with pytest.raises(error, match=match):
        train_flow(params, str(project))
    tracking.configure(params.tracking, project)
    client = MlflowClient()
    experiment = client.get_experiment_by_name(params.tracking.experiment)
    parents = client.search_runs([experiment.experiment_id],
                                 filter_string="tags.`tlpipe.kind` = 'pipeline'")
    assert len(parents) == 1 and parents[0].info.status == "FAILED"
    name = params.registry.model_name
    assert client.search_registered_models(filter_string=f"name = '{name}'") == []
    return project, parents[0]


def test_failed_validation_stops_before_training_and_registers_nothing(tmp_path, prefect_harness):
    def add_empty_file(data):
        (data / "train" / "bees" / "empty.jpg").write_bytes(b"")

    project, run = _failing_run(tmp_path, {"registry": {"model_name": "never-registered"}},
                                ValidationFailed, "decodable", add_empty_file)
    assert "train/bees/empty.jpg" in run.data.tags["failure_reason"]
    assert not list(project.glob("runs/*/features"))
    artifacts = {a.path for a in MlflowClient().list_artifacts(run.info.run_id, "validation")}
    assert "validation/report.md" in artifacts


def test_failure_after_validation_marks_the_run_failed_and_registers_nothing(tmp_path,
                                                                             prefect_harness):
    # A backbone whose weights file is missing must fail, never fall back to random weights.
    backbone = {"name": "timm/resnet18", "weights_file": "missing.pth"}
    _, run = _failing_run(tmp_path, {"registry": {"model_name": "never-registered-2"},
                                     "backbone": backbone},
                          BackboneError, "weights_file")
    assert "backbone" in run.data.tags["failure_reason"]


def test_the_version_carries_its_model_card_and_belongs_to_the_pipeline_run(trained):
    project, params, first, _ = trained
    tracking.configure(params.tracking, project)  # the failing runs above used other stores
    client, name = MlflowClient(), params.registry.model_name
    version = client.get_model_version(name, first["model"]["version"])
    assert version.description.startswith(f"# Model card: {name}\n")
    assert "| ants |" in version.description and "| bees |" in version.description
    model = client.get_registered_model(name)
    assert "ants, bees" in model.description and "tlpipe" in model.description
    # What the run page shows as "Registered models": the versions whose run_id is the run
    # (MLflow's GraphQL resolver for Run.modelVersions runs this very search).
    listed = client.search_model_versions(f"run_id='{first['run_id']}'")
    assert [(v.name, str(v.version)) for v in listed] == [(name, str(version.version))]
    # Its "Logged models" table: the run's model outputs, each listing its versions.
    model_id = version.source.removeprefix("models:/")
    parent = client.get_run(first["run_id"])
    assert [o.model_id for o in parent.outputs.model_outputs] == [model_id]
    assert f'"version": "{version.version}"' in (
        client.get_logged_model(model_id).tags["mlflow.modelVersions"])


def prefect_artifacts(flow_run_id: str) -> dict:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {artifact.key: artifact for artifact in found}


def test_a_flow_run_publishes_validation_and_test_figures_as_prefect_artifacts(trained):
    project, params, first, _ = trained
    tracking.configure(params.tracking, project)
    flow_run_id = MlflowClient().get_run(first["run_id"]).data.tags["prefect_flow_run_id"]
    found = prefect_artifacts(flow_run_id)
    assert set(found) >= {"test-ants-bees-validation", "test-ants-bees-audit",
                          "test-ants-bees-test-metrics", "test-ants-bees-test-per-class"}
    assert found["test-ants-bees-audit"].description.startswith("Audit of ")
    validation = found["test-ants-bees-validation"]
    assert validation.description.startswith("Data validation PASSED: ")
    assert "QUARANTINED" in validation.data
    metrics = found["test-ants-bees-test-metrics"]
    assert f"accuracy {first['test_accuracy']:.4f}" in metrics.description
    per_class = found["test-ants-bees-test-per-class"]
    assert per_class.type == "table"
    assert [row["class"] for row in json.loads(per_class.data)] == ["ants", "bees"]


def test_a_promotion_publishes_its_verdict_as_a_prefect_artifact(trained):
    project, params, _, _ = trained
    decision = promote_flow(params, str(project))
    flow_run_id = MlflowClient().get_run(decision["run_id"]).data.tags["prefect_flow_run_id"]
    artifact = prefect_artifacts(flow_run_id)["test-ants-bees-promotion"]
    assert artifact.description.startswith(f"v{decision['challenger']} "
                                           f"{decision['verdict'].upper()}")
    assert decision["reason"] in artifact.data and "| check | passed | detail |" in artifact.data


def test_a_failed_validation_still_publishes_its_verdict(tmp_path, prefect_harness):
    def add_empty_file(data):
        (data / "train" / "bees" / "empty.jpg").write_bytes(b"")

    _, run = _failing_run(tmp_path, {"registry": {"model_name": "Never_Registered 3"}},
                          ValidationFailed, "decodable", add_empty_file)
    found = prefect_artifacts(run.data.tags["prefect_flow_run_id"])
    artifact = found["never-registered-3-validation"]  # the name made a key Prefect accepts
    assert artifact.description.startswith("Data validation FAILED (decodable): ")
    assert "train/bees/empty.jpg" in artifact.data


def test_a_fail_verdict_of_the_audit_stops_before_training_and_registers_nothing(
        tmp_path, prefect_harness):
    leak = "train/bees/resized_copy.jpg"

    def leak_a_test_image_into_train(data):
        original = sorted((data / "val" / "bees").glob("*.jpg"))[0]
        with Image.open(original) as image:
            image.convert("RGB").resize((image.width * 4 // 5, image.height * 4 // 5)).save(
                data / leak, quality=75)

    project, run = _failing_run(tmp_path, {"registry": {"model_name": "never-registered-4"},
                                           "audit": {"leaks": "fail"}},
                                AuditFailed, r"audit\.leaks is fail", leak_a_test_image_into_train)
    assert leak in run.data.tags["failure_reason"]
    assert not list(project.glob("runs/*/head"))
    client = MlflowClient()
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "audit")}
    assert {"audit/report.html", "audit/findings.json"} <= logged
    artifact = prefect_artifacts(run.data.tags["prefect_flow_run_id"])["never-registered-4-audit"]
    assert "FAILED on leak" in artifact.description and leak in artifact.data
