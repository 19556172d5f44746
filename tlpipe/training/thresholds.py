"""Per-class decision thresholds: trading a rare class's precision for its recall, chosen on
validation and kept only where they help on validation images they were not fitted on.

A model with thresholds ``t`` (one per class, summing to 1) answers the class with the largest
``probability / t``; with two classes that is "class 1 when its probability is at least
t[1]". The probabilities themselves are unchanged. Evaluation, the promotion gate, the pyfunc
and the ONNX export all decide through ``decide``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sklearn.model_selection import StratifiedKFold

from tlpipe.metrics import decide, scores_of

# Multipliers of a class's probability tried by the search: 1/16 to 16, evenly in log scale.
WEIGHT_GRID = np.geomspace(1 / 16, 16, 33)
SEARCH_ROUNDS = 3


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
