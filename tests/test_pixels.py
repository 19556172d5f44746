"""Data far from photos: 28-px handwritten digits pass validation with the defaults, and their
own pixels (32x32 grey) replace the pretrained backbone because the probe on train + val
scores them higher; the model built on them skips fine-tuning, is evaluated, saved, loaded
and exported to ONNX like any other. Real images, the real backbone for the comparison."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import make_project, onnx_probabilities
from tests.images import write_digits
from tlpipe.config import FeaturesConfig, ValidationConfig
from tlpipe.params_file import load_params
from tlpipe.paths import outputs_for
from tlpipe.serving.export import export_onnx
from tlpipe.serving.inference import Scorer
from tlpipe.stages import audit, evaluate, features, finetune, head, manifest, validate
from tlpipe.training.head_kinds import head_kind
from tlpipe.training.model import load_classifier
from tlpipe.vectors.backbones import PIXELS, load_backbone
from tlpipe.vectors.images import load_rgb
from tlpipe.vectors.preprocess import eval_transform


def test_the_pixel_backbone_is_the_image_in_grey_flattened():
    backbone = load_backbone(PIXELS)
    assert backbone.blocks == [] and backbone.num_features == 32 * 32
    images = torch.rand(2, 3, 32, 32)
    vectors = backbone.model(images)
    assert vectors.shape == (2, 1024)
    assert torch.allclose(vectors[1].reshape(32, 32), images[1].mean(0))


@pytest.mark.slow
def test_digits_choose_their_own_pixels_over_the_backbone_and_serve_them(tmp_path):
    data = write_digits(tmp_path / "digits", per_class=20, side=28)
    project = make_project(tmp_path / "project", data, {
        "data": {"expected_classes": None},
        "split": {"test_fraction": 0.25, "val_fraction": 0.25},
        "features": {"try_pixels": True}})  # the default (the tests' small runs skip it)
    params = load_params(project / "params.yaml")
    assert params.validation.min_side == ValidationConfig().min_side <= 28
    assert FeaturesConfig().try_pixels
    for stage in (manifest, validate, features, audit, head):
        stage.compute(params, project)
    out = outputs_for(params, project)

    choice = json.loads(out.preprocessing.read_text())
    assert set(choice["probe_scores"]) == {"crop", "resize", PIXELS}
    assert choice["backbone"] == PIXELS
    assert choice["probe_scores"][PIXELS] > max(choice["probe_scores"]["crop"],
                                                choice["probe_scores"]["resize"])

    tuned = finetune.compute(params, project)
    assert tuned["verdict"] == "skipped" and PIXELS in tuned["reason"]
    # Nothing to fine-tune and too few validation images to choose by (the ladder
    # cross-validated): a head that needs no early stopping is fitted on train + val.
    chosen = json.loads(out.head_spec.read_text())
    refitted = not head_kind(chosen["candidate"].split()[0]).early_stopping
    assert chosen["fitted_on"] == ("train+val" if refitted else "train")
    if refitted:
        assert "fitted on the validation images too" in tuned["tta"]["reason"]
    metrics = evaluate.compute(params, project)
    assert metrics["accuracy"] >= 0.8, metrics  # 50 test digits; the backbone's probe: ~0.6
    predictions = json.loads(out.predictions_json.read_text())
    assert all(abs(sum(row[f"prob_digit_{d}"] for d in range(10)) - 1) < 1e-4
               for row in predictions)
    wrong = sum(row["actual"] != row["predicted"] for row in predictions)
    assert f"{wrong} of {len(predictions)} test images misclassified" in \
        out.mistakes_html.read_text()

    model, spec = load_classifier(out.model_dir)
    assert spec.backbone == PIXELS and spec.preprocessing["input_size"] == 32
    paths = sorted(data.rglob("*.png"))[:6]
    transform = eval_transform(spec.preprocessing_config)
    pixels = torch.stack([transform(load_rgb(path)) for path in paths])
    expected = Scorer(model, spec, params.features, torch.device("cpu"))(pixels)
    target = tmp_path / "digits.onnx"
    report = export_onnx(model, spec, target, [load_rgb(paths[0])], "test")
    # The digits are grey PNGs: the graph takes them as they decode, one channel.
    exported = onnx_probabilities(target, [Image.open(path) for path in paths])
    assert np.abs(exported - expected).max() < report.tolerance
