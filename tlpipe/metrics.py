"""Classification metrics from predicted probabilities: headline figures, per-class figures,
calibration. Plain NumPy and scikit-learn, shared by evaluation and the promotion gate."""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)


def decide(probabilities: np.ndarray, thresholds: list[float] | None = None) -> np.ndarray:
    """Each row's class index: the largest probability, or with per-class ``thresholds`` the
    largest probability / threshold (``training.decisions``)."""
    probabilities = np.asarray(probabilities)
    if thresholds is None:
        return probabilities.argmax(axis=1)
    return (probabilities / np.asarray(thresholds, dtype=probabilities.dtype)).argmax(axis=1)


def scores_of(truth: np.ndarray, predicted: np.ndarray, num_classes: int,
              metric: str) -> np.ndarray:
    """``metric`` (accuracy or macro-F1 over all ``num_classes``, a class absent from both
    sides counting 0, as ``compute_metrics`` counts it) of ``predicted`` against each row of
    ``truth`` (one labelling per row)."""
    truth = np.atleast_2d(truth)
    matched = truth == predicted[None, :]
    if metric == "accuracy":
        return matched.mean(axis=1)
    rows = np.broadcast_to(np.arange(len(truth))[:, None], truth.shape)
    true_positives = np.bincount((rows * num_classes + predicted[None, :])[matched],
                                 minlength=len(truth) * num_classes
                                 ).reshape(len(truth), num_classes)
    support = np.bincount(truth[0], minlength=num_classes)  # the same in every shuffling
    guessed = np.bincount(predicted, minlength=num_classes)
    denominator = support + guessed
    f1 = np.divide(2 * true_positives, denominator, out=np.zeros(true_positives.shape),
                   where=denominator > 0)
    return f1.mean(axis=1)


def expected_calibration_error(y_true: np.ndarray, probabilities: np.ndarray, bins: int) -> float:
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, bins + 1)
    error = 0.0
    for low, high in itertools.pairwise(edges):
        in_bin = (confidence > low) & (confidence <= high)
        if in_bin.any():
            error += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(error)


def compute_metrics(y_true: np.ndarray, probabilities: np.ndarray, classes: list[str],
                    calibration_bins: int, thresholds: list[float] | None = None) -> dict:
    """The figures of the model's answers (``decide``); calibration is of its probabilities."""
    y_pred = decide(probabilities, thresholds)
    labels = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro",
                                   zero_division=0)),
        "ece": expected_calibration_error(y_true, probabilities, calibration_bins),
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]),
                   "f1": float(f1[i]), "support": int(support[i])}
            for i, name in enumerate(classes)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "classes": classes,
        "n_test": len(y_true),
    }


def flat_metrics(metrics: dict, prefix: str = "test_") -> dict[str, float]:
    """Plain metric names for MLflow: test_accuracy, test_recall_ants, ..."""
    flat = {f"{prefix}{key}": metrics[key] for key in ("accuracy", "macro_f1", "ece")}
    for name, figures in metrics["per_class"].items():
        for figure in ("precision", "recall", "f1"):
            flat[f"{prefix}{figure}_{metric_safe(name)}"] = figures[figure]
    return flat


def metric_safe(class_name: str) -> str:
    """A class name as MLflow accepts it in a metric name (letters, digits, _ - . and spaces):
    a folder named `it's $(x)` must not fail the run at its last stage."""
    return re.sub(r"[^\w\-. ]", "_", class_name)


def wilson_half_width(successes: int, n: int, z: float = 1.96) -> float:
    """Half the width of the Wilson 95% interval of a proportion measured on ``n`` items."""
    if n == 0:
        return 1.0
    p = successes / n
    return z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)


def small_split_warning(labels: list[str], correct: int, min_images: int,
                        min_per_class: int, unit: str = "images") -> str | None:
    """Why a test split is too small to trust its figures, or None when it is not
    (``unit``: what the data is, images or texts)."""
    counts = Counter(labels)
    thin = sorted(name for name, count in counts.items() if count < min_per_class)
    if len(labels) >= min_images and not thin:
        return None
    short = (f"{len(labels)} test {unit} (fewer than evaluation.min_test_images="
             f"{min_images})" if len(labels) < min_images else f"{len(labels)} test {unit}")
    if thin:
        short += (f"; under evaluation.min_test_per_class={min_per_class}: "
                  + ", ".join(f"{name} {counts[name]}" for name in thin))
    return (f"small test split: {short}. The 95% interval of accuracy here is about "
            f"±{wilson_half_width(correct, len(labels)):.2f}, so differences smaller than that "
            f"are noise: add test {unit} before trusting these figures or a promotion")
