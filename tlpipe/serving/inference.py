"""Scoring images with a trained classifier on the engine the features use.

The backbone runs on the feature engine for the device (``features.engine``: onnxruntime on
CPUs, exported once per backbone weights, and checked against PyTorch float32 on the first
real batch; torch on GPUs), the head in PyTorch on the CPU. A head-only model shares the
pretrained backbone's exported graph; a fine-tuned one gets its own, keyed by its weights.
Evaluation, promotion's re-scoring, `predict` and the served model all score through here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from tlpipe.config import FeaturesConfig, Params
from tlpipe.metrics import decide
from tlpipe.training.decisions import probabilities_with
from tlpipe.training.model import Classifier, ModelSpec
from tlpipe.vectors.backbones import Backbone, state_digest
from tlpipe.vectors.engines import check_fidelity, engine_placement, feature_engine
from tlpipe.vectors.preprocess import ImageFolderRows, iterate_batches


class Scorer:
    """Normalised image batches (NCHW float32, on the CPU) to class probabilities."""

    def __init__(self, model: Classifier, spec: ModelSpec, config: FeaturesConfig,
                 device: torch.device):
        # Loaded for scoring alone, so the backbone stays where the engine wants it.
        place_on, channels_last = engine_placement(config, device)
        model.eval().backbone.to(place_on, memory_format=torch.channels_last if channels_last
                                 else torch.contiguous_format)
        self.backbone = Backbone(spec.backbone, model.backbone, spec.num_features,
                                 spec.preprocessing_config, state_digest(model.backbone))
        self.head, self.config, self.tta = model.head.eval(), config, spec.tta
        self.engine = feature_engine(self.backbone, config, config.engine_dir.expanduser(),
                                     device)

    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        check_fidelity(self.engine, self.backbone, batch, self.config)  # once per graph
        return probabilities_with(self.tta, self._probabilities, batch).numpy()

    def _probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        features = torch.from_numpy(self.engine.forward(batch))
        with torch.inference_mode():
            return torch.softmax(self.head(features), dim=1)


class TextScorer:
    """Texts to class probabilities: the encoder on the device, the head on the CPU."""

    def __init__(self, model: Classifier, device: torch.device, batch_size: int = 64):
        self.encoder, self.head = model.backbone.eval(), model.head.eval()
        self.device, self.batch_size = device, batch_size

    def __call__(self, texts: list[str]) -> np.ndarray:
        vectors = self.encoder.encode(list(texts), self.batch_size, self.device)
        with torch.inference_mode():
            return torch.softmax(self.head(torch.from_numpy(vectors)), dim=1).numpy()


def predict_probabilities(scorer: Scorer, root: Path, paths: list[str], batch_size: int
                          ) -> np.ndarray:
    """Class probabilities of the images at ``paths`` under ``root``, in order."""
    dataset = ImageFolderRows.for_evaluation(root, paths, scorer.backbone.preprocessing)
    batches = iterate_batches(dataset, batch_size, workers=1, pin_memory=scorer.engine.pin_memory)
    return np.concatenate([scorer(images) for images, _ in tqdm(
        batches, desc="evaluate", unit="batch", total=-(-len(paths) // batch_size))])


def probabilities_of(model: Classifier, spec: ModelSpec, root: Path, paths: list[str],
                     texts: list[str] | None, params: Params, device: torch.device
                     ) -> np.ndarray:
    """A model's class probabilities on held-out data: the images at ``paths`` under ``root``,
    or, for a text model, ``texts``. Evaluation and the promotion gate both score here."""
    if spec.modality == "text":
        return TextScorer(model, device, params.text.batch_size)(texts)
    return predict_probabilities(Scorer(model, spec, params.features, device), root, paths,
                                 params.evaluation.batch_size)


def prediction_frame(probabilities: np.ndarray, classes: list[str],
                     thresholds: list[float] | None = None) -> pd.DataFrame:
    """``label`` (the model's answer, its thresholds applied), its ``probability`` and every
    class's ``prob_<class>``."""
    best = decide(probabilities, thresholds)
    frame = pd.DataFrame({
        "label": [classes[i] for i in best],
        "probability": probabilities[np.arange(len(best)), best].astype(float),
    })
    for index, name in enumerate(classes):
        frame[f"prob_{name}"] = probabilities[:, index].astype(float)
    return frame
