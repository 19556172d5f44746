"""Per-class thresholds: found where a rare class is under-called, refused where they do not
help on validation images they were not fitted on, and applied the same by every consumer."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from tlpipe.metrics import compute_metrics, decide, scores_of
from tlpipe.serving.inference import prediction_frame
from tlpipe.training.decisions import choose_thresholds


def shy_rare_class(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three classes 8:4:1 whose rare class (2) gets too little probability: its images
    usually rank it second."""
    generator = np.random.default_rng(seed)
    truth = generator.choice(3, size=count, p=[8 / 13, 4 / 13, 1 / 13])
    logits = generator.normal(0, 1, (count, 3))
    logits[np.arange(count), truth] += 2.5
    logits[:, 2] -= 2.0  # the bias a class-imbalanced fit leaves behind
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return probabilities, truth


def macro_f1(truth: np.ndarray, predicted: np.ndarray) -> float:
    return f1_score(truth, predicted, labels=[0, 1, 2], average="macro", zero_division=0)


def test_thresholds_fitted_on_validation_raise_the_rare_class_on_unseen_images():
    val_probabilities, val_truth = shy_rare_class(400, seed=0)
    choice = choose_thresholds("auto", val_probabilities, val_truth, "macro_f1", seed=0)
    assert choice.thresholds is not None, choice.reason
    assert choice.thresholds[2] < min(choice.thresholds[:2])  # the rare class is called sooner
    assert abs(sum(choice.thresholds) - 1) < 1e-9
    test_probabilities, test_truth = shy_rare_class(4000, seed=1)
    plain = macro_f1(test_truth, test_probabilities.argmax(axis=1))
    tuned = macro_f1(test_truth, decide(test_probabilities, choice.thresholds))
    assert tuned > plain + 0.03, (plain, tuned)
    recall = [(decide(test_probabilities, t)[test_truth == 2] == 2).mean()
              for t in (None, choice.thresholds)]
    assert recall[1] > recall[0] + 0.2


def test_no_thresholds_where_the_plain_model_is_already_best():
    generator = np.random.default_rng(2)
    truth = generator.integers(0, 3, 300)
    logits = generator.normal(0, 1, (300, 3))
    logits[np.arange(300), truth] += 1.5  # unbiased: argmax is the best rule there is
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    choice = choose_thresholds("auto", probabilities, truth, "macro_f1", seed=0)
    assert choice.thresholds is None and "do not help" in choice.reason
    assert choice.scores["thresholds_on_unseen_half"] <= choice.scores["plain"]
    assert choose_thresholds("none", probabilities, truth, "macro_f1", 0).thresholds is None
    few = choose_thresholds("auto", probabilities[:5], np.array([0, 0, 1, 1, 2]), "macro_f1", 0)
    assert few.thresholds is None and "fewer than 2" in few.reason


@pytest.mark.parametrize("metric", ["macro_f1", "accuracy"])
def test_the_score_the_search_uses_is_scikit_learns(metric):
    generator = np.random.default_rng(3)
    truth, predicted = generator.integers(0, 4, 200), generator.integers(0, 3, 200)
    # Class 3 is never predicted: its F1 counts as 0, as with zero_division=0.
    expected = (f1_score(truth, predicted, labels=[0, 1, 2, 3], average="macro",
                         zero_division=0) if metric == "macro_f1" else (truth == predicted).mean())
    assert scores_of(truth, predicted, 4, metric)[0] == pytest.approx(expected)


def test_predictions_and_metrics_apply_the_thresholds():
    probabilities = np.array([[0.7, 0.2, 0.1], [0.5, 0.2, 0.3], [0.1, 0.8, 0.1]])
    thresholds = [0.45, 0.45, 0.1]  # class 2 wins at 2/9 of the leading probability
    frame = prediction_frame(probabilities, ["a", "b", "rare"], thresholds)
    assert frame["label"].tolist() == ["a", "rare", "b"]
    assert frame["probability"].tolist() == pytest.approx([0.7, 0.3, 0.8])
    metrics = compute_metrics(np.array([0, 2, 1]), probabilities, ["a", "b", "rare"], 5,
                              thresholds)
    assert metrics["accuracy"] == 1.0
    assert compute_metrics(np.array([0, 2, 1]), probabilities, ["a", "b", "rare"], 5
                           )["accuracy"] == pytest.approx(2 / 3)
