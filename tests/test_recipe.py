"""The training recipe on data far from ImageNet (greyscale shapes, three classes, varied sizes
and formats): the ladder of heads, the preprocessing choice, fine-tuning only when it helps,
and the warning for a test split too small to trust. Real images, the real backbone."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import make_project
from tests.images import SHAPES, write_shapes
from tlpipe.params_file import load_params
from tlpipe.paths import outputs_for
from tlpipe.stages import audit, evaluate, features, finetune, head, manifest, validate
from tlpipe.training.heads import HeadSpec, build_head
from tlpipe.training.model import load_classifier
from tlpipe.vectors.backbones import backbone_for


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    base = tmp_path_factory.mktemp("recipe")
    data = write_shapes(base / "shapes", per_class=16)
    project = make_project(base / "project", data, {
        "data": {"expected_classes": list(SHAPES)},
        "split": {"test_fraction": 0.25, "val_fraction": 0.25},
        "features": {"eval_resize": "auto", "try_pixels": True},
        "head": {"candidates": ["logistic", "linear", "mlp", "knn"]},
        "registry": {"model_name": "shapes"}})
    params = load_params(project / "params.yaml")
    for stage in (manifest, validate, features, audit):
        stage.compute(params, project)
    return project


def scores(board: list[dict]) -> list[tuple]:
    return [(row["candidate"], row["score"], row["score_std"], row["chosen"]) for row in board]


@pytest.mark.slow
def test_auto_preprocessing_scores_every_option_on_training_data_and_records_the_choice(
        project):
    params = load_params(project / "params.yaml")
    choice = json.loads(outputs_for(params, project).preprocessing.read_text())
    scores = choice["probe_scores"]
    assert set(scores) == {"crop", "resize", "pixels"}
    # Shapes on noise: the backbone separates them better than their pixels do.
    assert scores["pixels"] < max(scores["crop"], scores["resize"])
    assert choice["backbone"] == params.backbone.name
    best = max(("crop", "resize"), key=scores.get)
    assert choice["chosen"]["resize"] == best or (
        scores["crop"] == scores["resize"] and choice["chosen"]["resize"] == "crop")


@pytest.mark.slow
def test_the_ladder_scores_every_candidate_and_never_reads_the_test_split(project):
    params = load_params(project / "params.yaml")
    out = outputs_for(params, project)
    result = head.compute(params, project)
    board = result["leaderboard"]
    assert len(board) == len(params.head.train_views) * (
        len(params.head.logistic_c) + 2 + len(params.head.knn_k))
    assert [row["chosen"] for row in board].count(True) == 1
    chosen = next(row for row in board if row["chosen"])
    assert chosen["score"] == max(row["score"] for row in board)
    assert chosen["protocol"] == "5-fold CV"  # a dozen validation images: too few alone
    assert json.loads(out.leaderboard.read_text()) == [
        {k: v for k, v in row.items() if k != "seconds"} for row in board]
    weights = out.head_weights.read_bytes()

    # Every test label swapped for another class: the choice and the head stay the same.
    plan = pd.read_parquet(out.plan)
    test = plan["split"] == "test"
    shifted = {name: SHAPES[(i + 1) % len(SHAPES)] for i, name in enumerate(SHAPES)}
    plan.loc[test, "label"] = plan.loc[test, "label"].map(shifted)
    plan.to_parquet(out.plan, index=False)
    again = head.compute(params, project)
    assert scores(again["leaderboard"]) == scores(board)
    assert out.head_weights.read_bytes() == weights


@pytest.mark.slow
def test_a_fine_tune_worse_than_its_head_is_not_kept(project, tmp_path):
    params = load_params(project / "params.yaml", {
        "outputs_dir": str(tmp_path / "outputs"), "head": {"candidates": ["logistic"]},
        # A learning rate this large wrecks the unfrozen block in one epoch.
        "finetune": {"epochs": 1, "lr": 5.0, "layer_decay": 1.0}})
    shutil.copytree(outputs_for(load_params(project / "params.yaml"), project).root,
                    tmp_path / "outputs")
    out = outputs_for(params, project)
    head.compute(params, project)
    result = finetune.compute(params, project)
    assert result["verdict"] == "not kept" and "no epoch beat the head" in result["reason"]
    history = json.loads(out.finetune_history.read_text())
    assert history["epochs"][0]["val_loss"] > history["start"]["val_loss"]

    # What is registered is exactly the head on the untouched backbone.
    model, _ = load_classifier(out.model_dir)
    chosen = build_head(HeadSpec(**json.loads(out.head_spec.read_text())["spec"]))
    chosen.load_state_dict(load_file(str(out.head_weights)))
    for name, value in chosen.state_dict().items():
        assert torch.equal(model.head.state_dict()[name], value), name
    backbone = backbone_for(params.backbone, project).model.state_dict()
    assert all(torch.equal(value, backbone[name])
               for name, value in model.backbone.state_dict().items())

    metrics = evaluate.compute(params, project)
    assert metrics["small_test_split"].startswith("small test split: ")
    assert "evaluation.min_test_images=30" in metrics["small_test_split"]


@pytest.mark.slow
def test_the_fine_tune_search_and_the_flip_choice_never_read_the_test_split(project, tmp_path):
    """Two depths searched, then test-time flips judged: with every test label swapped for
    another class, the same table, the same choices and the same weights."""
    settings = {"outputs_dir": str(tmp_path / "outputs"), "head": {"candidates": ["linear"]},
                "finetune": {"epochs": 2, "unfreeze_blocks": [1, 2], "lr": [1e-3],
                             "checkpoint_dir": str(tmp_path / "checkpoints")},
                "evaluation": {"tta": "auto"}}
    params = load_params(project / "params.yaml", settings)
    shutil.copytree(outputs_for(load_params(project / "params.yaml"), project).root,
                    tmp_path / "outputs")
    out = outputs_for(params, project)
    head.compute(params, project)

    def outcome() -> tuple:
        result = finetune.compute(params, project)
        history = json.loads(out.finetune_history.read_text())
        search = [{k: v for k, v in row.items() if k != "seconds"} for row in result["search"]]
        return search, history["epochs"], history["tta"], (out.model_dir / "model.safetensors"
                                                           ).read_bytes()

    first = outcome()
    assert len(first[0]) == 2 and [row["outcome"] for row in first[0]].count("chosen") == 1
    validated = pd.read_parquet(out.validated)
    test = validated["split"] == "test"
    shifted = {name: SHAPES[(i + 1) % len(SHAPES)] for i, name in enumerate(SHAPES)}
    validated.loc[test, "label"] = validated.loc[test, "label"].map(shifted)
    validated.to_parquet(out.validated, index=False)
    shutil.rmtree(tmp_path / "checkpoints")  # nothing reused: the search runs again
    assert outcome() == first
