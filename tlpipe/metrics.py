"""Classification metrics from predicted probabilities: headline figures, per-class figures,
calibration. Plain NumPy and scikit-learn, shared by evaluation and the promotion gate."""

from __future__ import annotations

import itertools

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)


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
                    calibration_bins: int) -> dict:
    y_pred = probabilities.argmax(axis=1)
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
            flat[f"{prefix}{figure}_{name}"] = figures[figure]
    return flat
