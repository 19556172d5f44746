"""How a model's probabilities become its answers, both chosen on validation: test-time
flips (each image scored with its mirror image, fastai's ``tta`` without its random crops) and
per-class decision thresholds (a rare class's precision traded for its recall). Each is kept
only where it helps on validation.

Test-time augmentation: evaluation, the served model and the ONNX export all score through
``probabilities_with`` with the model's own ``tta`` (``ModelSpec.tta``), so what validation
chose is what is served.

Thresholds: a model with thresholds ``t`` (one per class, summing to 1) answers the class with
the largest ``probability / t``; with two classes that is "class 1 when its probability is at
least t[1]". The probabilities themselves are unchanged. Evaluation, the promotion gate, the
pyfunc and the ONNX export all decide through ``metrics.decide``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold
from torch import nn

from tlpipe.metrics import decide, scores_of
from tlpipe.training.early_stopping import ValidationScores

# Multipliers of a class's probability tried by the search: 1/16 to 16, evenly in log scale.
WEIGHT_GRID = np.geomspace(1 / 16, 16, 33)
SEARCH_ROUNDS = 3


Probabilities = Callable[[torch.Tensor], torch.Tensor]


def probabilities_with(tta: str, probabilities: Probabilities, images: torch.Tensor
                       ) -> torch.Tensor:
    """Class probabilities of an image batch (NCHW); with ``tta`` "flip", the mean of the
    images' and their left-right mirror images'."""
    if tta == "none":
        return probabilities(images)
    if tta == "flip":
        return (probabilities(images) + probabilities(images.flip(-1))) / 2
    raise ValueError(f"test-time augmentation {tta!r}: expected 'none' or 'flip'")


@dataclass(frozen=True)
class TtaChoice:
    tta: str  # what the model does: "none" or "flip"
    reason: str
    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # on validation, by tta

    def to_dict(self) -> dict:
        return {"tta": self.tta, "reason": self.reason, "scores": self.scores}


@dataclass(frozen=True)
class ValidationProbabilities:
    """A model's class probabilities on the validation images, plain and mirrored."""

    plain: torch.Tensor
    flipped: torch.Tensor
    truth: torch.Tensor

    def under(self, tta: str) -> torch.Tensor:
        return self.plain if tta == "none" else (self.plain + self.flipped) / 2


def validation_probabilities(model: nn.Module, val_batches: Iterable[tuple[torch.Tensor,
                                                                             torch.Tensor]],
                             device: torch.device) -> ValidationProbabilities:
    plain, flipped, truth = [], [], []
    model.eval().to(device)
    try:
        with torch.inference_mode():
            for images, labels in val_batches:
                images = images.to(device)
                plain.append(torch.softmax(model(images).float(), dim=1).cpu())
                flipped.append(torch.softmax(model(images.flip(-1)).float(), dim=1).cpu())
                truth.append(labels.cpu())
    finally:
        model.cpu()
    if not truth:
        return ValidationProbabilities(torch.empty(0, 0), torch.empty(0, 0),
                                       torch.empty(0, dtype=torch.long))
    return ValidationProbabilities(torch.cat(plain), torch.cat(flipped), torch.cat(truth))


def choose_tta(setting: str, validation: ValidationProbabilities | None, num_classes: int,
               selection_metric: str = "macro_f1", unavailable: str | None = None
               ) -> TtaChoice:
    """``setting`` "flip" or "none" as given; "auto": "flip" only if it scores a lower
    class-balanced validation loss and no lower ``selection_metric`` than the plain model on
    ``validation`` (the rule early stopping applies to an epoch), else "none", also where
    there is no validation to judge on (``unavailable`` says why)."""
    if setting != "auto":
        return TtaChoice(setting, f"evaluation.tta is {setting}")
    if validation is None or not len(validation.truth):
        return TtaChoice("none", f"{unavailable or 'no validation images'}: test-time flips "
                                 "are not judged")
    truth = validation.truth
    figures = {}
    for name in ("none", "flip"):
        probabilities, scores = validation.under(name), ValidationScores(num_classes)
        picked = probabilities[torch.arange(len(truth)), truth]
        scores.add(-picked.clamp(min=1e-12).log(), probabilities.argmax(1), truth)
        figures[name] = scores.figures()
    key = f"val_{selection_metric}"
    better = (figures["flip"]["val_loss"] < figures["none"]["val_loss"]
              and figures["flip"][key] >= figures["none"][key])
    shown = "; ".join(f"{name}: val loss {score['val_loss']:.4f}, accuracy "
                      f"{score['val_accuracy']:.4f}, macro-F1 {score['val_macro_f1']:.4f}"
                      for name, score in figures.items())
    return TtaChoice("flip" if better else "none",
                     ("flips help on validation" if better
                      else "flips do not help on validation") + f" ({shown})", figures)


@dataclass(frozen=True)
class ThresholdChoice:
    thresholds: list[float] | None  # None: the plain largest probability
    reason: str
    scores: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"thresholds": self.thresholds, "reason": self.reason, "scores": self.scores}


def choose_thresholds(setting: str, probabilities: np.ndarray | None,
                      truth: np.ndarray | None, metric: str, seed: int,
                      unavailable: str | None = None) -> ThresholdChoice:
    """``setting`` "none": no thresholds. "auto": thresholds that maximise ``metric`` on the
    validation ``probabilities``, kept only if, fitted on one half of validation and applied to
    the other (both ways), they score higher than the plain model on the same images; none
    where there is no validation to choose on (``unavailable`` says why)."""
    if setting == "none":
        return ThresholdChoice(None, "evaluation.thresholds is none")
    if probabilities is None or truth is None or not len(truth):
        return ThresholdChoice(None, f"{unavailable or 'no validation images'}: no thresholds "
                                     "are chosen")
    truth = np.asarray(truth)
    num_classes = probabilities.shape[1]
    counts = np.bincount(truth, minlength=num_classes)
    if counts.min() < 2:
        return ThresholdChoice(None, "fewer than 2 validation images of a class: thresholds "
                                     "cannot be checked on images they were not fitted on")
    crossed = np.empty_like(truth)
    folds = StratifiedKFold(n_splits=2, shuffle=True, random_state=seed)
    for fit, check in folds.split(probabilities, truth):
        fitted = _fit(probabilities[fit], truth[fit], metric, num_classes)
        crossed[check] = decide(probabilities[check], fitted)
    plain = _score(metric, truth, probabilities.argmax(axis=1), num_classes)
    checked = _score(metric, truth, crossed, num_classes)
    scores = {"plain": plain, "thresholds_on_unseen_half": checked}
    shown = f"validation {metric}: plain {plain:.4f}, with thresholds fitted on the other half " \
            f"{checked:.4f}"
    if checked <= plain:
        return ThresholdChoice(None, f"thresholds do not help ({shown})", scores)
    return ThresholdChoice(_fit(probabilities, truth, metric, num_classes),
                           f"thresholds help ({shown})", scores)


def _score(metric: str, truth: np.ndarray, predicted: np.ndarray, num_classes: int) -> float:
    return float(scores_of(truth, predicted, num_classes, metric)[0])


def _fit(probabilities: np.ndarray, truth: np.ndarray, metric: str, num_classes: int
         ) -> list[float]:
    """Coordinate ascent on each class's probability multiplier; on ties the multiplier
    nearest 1 (the plain model) wins."""
    weights = np.ones(num_classes)
    best = _score(metric, truth, probabilities.argmax(axis=1), num_classes)
    by_closeness = WEIGHT_GRID[np.argsort(np.abs(np.log(WEIGHT_GRID)), kind="stable")]
    for _ in range(SEARCH_ROUNDS):
        improved = False
        for index in range(num_classes):
            for candidate in by_closeness:
                trial = weights.copy()
                trial[index] = candidate
                value = _score(metric, truth, (probabilities * trial).argmax(axis=1),
                              num_classes)
                if value > best:
                    best, weights, improved = value, trial, True
        if not improved:
            break
    thresholds = 1 / weights
    return [float(t) for t in thresholds / thresholds.sum()]
