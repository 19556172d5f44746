"""Test-time flips: chosen on validation only where they help, and done exactly alike by
evaluation (the Scorer), the served pyfunc and the ONNX export."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnxruntime
import pandas as pd
import pytest
import torch
from mlflow.pyfunc import PythonModelContext
from torch import nn

from tests.conftest import onnx_probabilities
from tests.images import photo
from tlpipe.config import FeaturesConfig
from tlpipe.metrics import decide
from tlpipe.serving.export import export_onnx
from tlpipe.serving.inference import Scorer, predict_probabilities
from tlpipe.serving.pyfunc import IMAGE_COLUMN, ImageClassifierModel
from tlpipe.training.decisions import choose_tta, probabilities_with, validation_probabilities
from tlpipe.training.heads import HeadSpec, build_head
from tlpipe.training.model import Classifier, ModelSpec, load_classifier, save_classifier
from tlpipe.vectors.backbones import load_backbone
from tlpipe.vectors.images import load_rgb


class LeftHalfDetector(nn.Module):
    """Sees only the left half of an image: class 1 when it holds a bright blob."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        left = images[..., : images.shape[-1] // 2].amax(dim=(1, 2, 3))
        return torch.stack([torch.zeros_like(left), 6.5 * left - 0.5], dim=1)


class MeanBrightness(nn.Module):
    """The same for an image and its mirror image: flips cannot change its answer."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        mean = images.mean(dim=(1, 2, 3))
        return torch.stack([torch.zeros_like(mean), 40 * mean - 0.5], dim=1)


def blobs() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Class 0: dark images; class 1: one bright pixel, left or right."""
    images = torch.zeros(8, 3, 8, 8)
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    for index, column in zip(range(4, 8), (1, 2, 5, 6), strict=True):
        images[index, :, 4, column] = 1.0
    return [(images[:4], labels[:4]), (images[4:], labels[4:])]


def test_auto_keeps_flips_only_where_they_beat_the_plain_model_on_validation():
    device = torch.device("cpu")
    helped = choose_tta("auto", validation_probabilities(LeftHalfDetector(), blobs(), device), 2)
    assert helped.tta == "flip", helped.reason
    assert helped.scores["flip"]["val_accuracy"] == 1.0
    assert helped.scores["none"]["val_accuracy"] == 0.75  # the right-hand blobs are missed
    brightness = validation_probabilities(MeanBrightness(), blobs(), device)
    unchanged = choose_tta("auto", brightness, 2)
    assert unchanged.tta == "none" and "do not help" in unchanged.reason
    assert choose_tta("flip", brightness, 2).tta == "flip"
    no_images = validation_probabilities(LeftHalfDetector(), [], device)
    assert choose_tta("auto", no_images, 2).tta == "none"


def test_flip_averages_an_image_and_its_mirror():
    images = blobs()[1][0]
    model = LeftHalfDetector()

    def softmax(batch: torch.Tensor) -> torch.Tensor:
        return torch.softmax(model(batch), dim=1)

    expected = (softmax(images) + softmax(torch.flip(images, dims=[3]))) / 2
    assert torch.allclose(probabilities_with("flip", softmax, images), expected)
    assert torch.equal(probabilities_with("none", softmax, images), softmax(images))
    with pytest.raises(ValueError, match="'none' or 'flip'"):
        probabilities_with("rotate", softmax, images)


@pytest.fixture(scope="module")
def flipped_model(tmp_path_factory):
    """A real backbone with a random head, saved with test-time flips on, and images whose
    mirror images score differently."""
    directory = tmp_path_factory.mktemp("tta")
    backbone = load_backbone()
    torch.manual_seed(0)
    head_spec = HeadSpec("linear", backbone.num_features, 3)
    head = build_head(head_spec)
    spec = ModelSpec(backbone.name, backbone.num_features, ["a", "b", "c"],
                     head_spec.to_dict(), backbone.preprocessing.to_dict(), tta="flip")
    save_classifier(Classifier(backbone.model, head), spec, directory / "model")
    images = directory / "images"
    images.mkdir()
    paths = []
    for seed in range(4):
        photo(seed, (90, 70)).save(images / f"{seed}.png")
        paths.append(f"{seed}.png")
    return directory / "model", images, paths


def test_evaluation_pyfunc_and_onnx_apply_the_same_flips(flipped_model, tmp_path):
    model_dir, images, paths = flipped_model
    model, spec = load_classifier(model_dir)
    assert spec.tta == "flip"
    settings = {"engine": "torch", "precision": "fp32"}  # ONNX Runtime is compared in fp32
    features = FeaturesConfig(**settings)
    evaluated = predict_probabilities(Scorer(model, spec, features, torch.device("cpu")),
                                      images, paths, batch_size=2)
    plain_spec = ModelSpec(**{**json.loads((model_dir / "model.json").read_text()),
                              "tta": "none"})
    plain = predict_probabilities(Scorer(load_classifier(model_dir)[0], plain_spec, features,
                                         torch.device("cpu")), images, paths, batch_size=2)
    assert np.abs(evaluated - plain).max() > 1e-3  # the flips change the answer

    served = ImageClassifierModel()
    served.load_context(PythonModelContext(artifacts={"model_dir": str(model_dir)},
                                           model_config={"device": "cpu",
                                                         "features": settings}))
    frame = served.predict(None, pd.DataFrame({IMAGE_COLUMN: [(images / p).read_bytes()
                                                              for p in paths]}))
    pyfunc = frame[[f"prob_{name}" for name in spec.classes]].to_numpy()
    assert np.abs(pyfunc - evaluated).max() < 1e-5

    target = tmp_path / "model.onnx"
    report = export_onnx(load_classifier(model_dir)[0], spec, target, [], "test")
    assert json.loads(target.with_suffix(".onnx.json").read_text())[
        "test_time_augmentation"] == "flip"
    exported = onnx_probabilities(target, [load_rgb(images / path) for path in paths])
    assert np.abs(exported - evaluated).max() < report.tolerance


def test_thresholds_saved_in_the_model_decide_the_pyfuncs_and_the_onnx_labels(flipped_model,
                                                                              tmp_path):
    source, images, paths = flipped_model
    model_dir = tmp_path / "model"
    shutil.copytree(source, model_dir)
    spec = json.loads((model_dir / "model.json").read_text())
    thresholds = [0.9, 0.07, 0.03]  # "a" only when it is far ahead
    (model_dir / "model.json").write_text(json.dumps({**spec, "thresholds": thresholds}))
    served = ImageClassifierModel()
    served.load_context(PythonModelContext(artifacts={"model_dir": str(model_dir)},
                                           model_config={"device": "cpu", "features": {
                                               "engine": "torch", "precision": "fp32"}}))
    frame = served.predict(None, pd.DataFrame({IMAGE_COLUMN: [(images / p).read_bytes()
                                                              for p in paths]}))
    probabilities = frame[["prob_a", "prob_b", "prob_c"]].to_numpy()
    expected = [["a", "b", "c"][i] for i in decide(probabilities, thresholds)]
    assert frame["label"].tolist() == expected
    assert expected != [["a", "b", "c"][i] for i in probabilities.argmax(axis=1)]

    target = tmp_path / "model.onnx"
    model, loaded = load_classifier(model_dir)
    export_onnx(model, loaded, target, [], "test")
    assert json.loads(target.with_suffix(".onnx.json").read_text())["thresholds"] == thresholds
    session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    labels = [int(session.run(None, {"image": np.asarray(load_rgb(images / p))[None]})[1][0])
              for p in paths]
    assert [["a", "b", "c"][i] for i in labels] == expected
