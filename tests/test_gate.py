"""The promotion gate as a pure function: each rule alone, on hand-made per-image results."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from tlpipe.config import PromotionConfig
from tlpipe.metrics import scores_of
from tlpipe.promotion.gate import Scores, apply_gate, mcnemar_exact_p

RULE = PromotionConfig(floor=0.8, min_improvement=0.0, max_recall_drop=0.05, significance=0.05)


def scores(version: str, correct: list[bool], macro_f1: float, recall: dict[str, float]):
    return Scores(version, {"accuracy": sum(correct) / len(correct), "macro_f1": macro_f1,
                            "ece": 0.0}, recall, correct)


def checks(result) -> dict[str, bool]:
    return {check.name: check.passed for check in result.checks}


@pytest.mark.parametrize(("wins", "losses", "expected"), [
    (0, 0, 1.0), (5, 0, 1 / 32), (4, 0, 1 / 16), (6, 1, 8 / 128), (1, 6, 127 / 128)])
def test_mcnemar_exact_one_sided_p_values(wins, losses, expected):
    assert mcnemar_exact_p(wins, losses) == pytest.approx(expected)


def test_first_version_becomes_champion_only_above_the_floor():
    good = scores("1", [True] * 9 + [False], 0.9, {"a": 0.9, "b": 0.9})
    poor = scores("1", [True] * 7 + [False] * 3, 0.7, {"a": 0.7, "b": 0.7})
    assert apply_gate(RULE, good, None).passed
    refused = apply_gate(RULE, poor, None)
    assert not refused.passed and "floor" in refused.reason


def test_significant_improvement_without_class_regression_passes():
    champion = scores("1", [False] * 6 + [True] * 14, 0.70 + 0.1, {"a": 0.8, "b": 0.6})
    challenger = scores("2", [True] * 20, 1.0, {"a": 1.0, "b": 1.0})
    result = apply_gate(RULE, challenger, champion)
    assert result.passed, result.reason
    assert checks(result) == {"floor": True, "improvement": True, "class_recall": True,
                              "mcnemar": True}


def test_a_better_model_by_chance_is_refused_by_mcnemar():
    # Two more right answers out of 20 images: a better metric, but p = 0.25.
    champion = scores("1", [False] * 2 + [True] * 18, 0.90, {"a": 0.9, "b": 0.9})
    challenger = scores("2", [True] * 20, 1.0, {"a": 1.0, "b": 1.0})
    result = apply_gate(RULE, challenger, champion)
    assert checks(result) == {"floor": True, "improvement": True, "class_recall": True,
                              "mcnemar": False}
    assert "p=0.25" in result.reason


def test_a_better_model_that_loses_one_class_is_refused():
    champion = scores("1", [False] * 8 + [True] * 32, 0.80, {"a": 0.95, "b": 0.65})
    challenger = scores("2", [True] * 40, 0.99, {"a": 0.85, "b": 1.0})
    result = apply_gate(RULE, challenger, champion)
    assert checks(result) == {"floor": True, "improvement": True, "class_recall": False,
                              "mcnemar": True}
    assert "'a'" in result.reason and "+0.1000" in result.reason


def test_minimum_improvement_is_enforced():
    rule = RULE.model_copy(update={"min_improvement": 0.05})
    champion = scores("1", [False] * 6 + [True] * 94, 0.94, {"a": 0.94, "b": 0.94})
    challenger = scores("2", [True] * 97 + [False] * 3, 0.97, {"a": 0.97, "b": 0.97})
    assert checks(apply_gate(rule, challenger, champion))["improvement"] is False


def test_a_small_test_split_is_named_with_its_interval_and_a_large_one_is_not():
    from tlpipe.metrics import small_split_warning, wilson_half_width

    labels = ["ants"] * 6 + ["bees"] * 6
    warning = small_split_warning(labels, correct=11, min_images=30, min_per_class=10)
    assert "12 test images (fewer than evaluation.min_test_images=30)" in warning
    assert "ants 6, bees 6" in warning
    assert f"±{wilson_half_width(11, 12):.2f}" in warning and wilson_half_width(11, 12) > 0.1
    assert small_split_warning(["a"] * 40 + ["b"] * 40, 70, 30, 10) is None
    thin = small_split_warning(["a"] * 40 + ["b"] * 5, 40, 30, 10)
    assert "under evaluation.min_test_per_class=10: b 5" in thin


BASELINE = RULE.model_copy(update={"floor": "baseline"})
CLASSES = ("common", "middling", "rare")


def scored(truth: np.ndarray, predicted: np.ndarray) -> Scores:
    """Scores of real predictions, through the same metrics as evaluation."""
    probabilities = np.eye(len(CLASSES))[predicted]
    return Scores.from_probabilities("1", truth, probabilities, list(CLASSES), 10)


def imbalanced_truth() -> np.ndarray:
    return np.repeat([0, 1, 2], [140, 45, 15])  # 200 test images, 9:3:1


def test_the_majority_and_shuffled_baselines_score_as_sklearn_does():
    rng = np.random.default_rng(3)
    truth, predicted = rng.integers(0, 4, 300), rng.integers(0, 4, 300)
    predicted[predicted == 3] = 2  # a class never predicted: its F1 counts 0
    for metric, reference in (("accuracy", accuracy_score(truth, predicted)),
                              ("macro_f1", f1_score(truth, predicted, average="macro",
                                                    labels=range(4), zero_division=0))):
        assert scores_of(truth, predicted, 4, metric)[0] == pytest.approx(reference)
        shuffled = np.stack([rng.permutation(truth) for _ in range(3)])
        assert scores_of(shuffled, predicted, 4, metric) == pytest.approx(
            [f1_score(row, predicted, average="macro", labels=range(4), zero_division=0)
             if metric == "macro_f1" else accuracy_score(row, predicted) for row in shuffled])


def test_a_weak_but_real_model_on_hard_imbalanced_data_passes_the_baseline_floor():
    """Macro-F1 near 0.56, far under a fixed 0.8 floor, yet it knows the classes."""
    truth = imbalanced_truth()
    rng = np.random.default_rng(0)
    predicted = np.where(rng.random(len(truth)) < 0.55, truth, rng.integers(0, 3, len(truth)))
    challenger = scored(truth, predicted)
    assert 0.45 < challenger.metrics["macro_f1"] < 0.7
    assert not apply_gate(RULE, challenger, None).passed  # the fixed floor refuses it
    result = apply_gate(BASELINE, challenger, None)
    assert result.passed, result.reason
    assert "beats the baselines on this split: always 'common' 0.27" in result.reason


def test_guessing_or_always_answering_the_common_class_is_refused():
    truth = imbalanced_truth()
    guesses = np.random.default_rng(1).choice(3, len(truth), p=[0.7, 0.2, 0.1])
    always_common = np.zeros_like(truth)
    for predicted in (guesses, always_common):
        result = apply_gate(BASELINE, scored(truth, predicted), None)
        assert checks(result) == {"floor": False, "first_champion": True}
        assert "does not beat the baselines" in result.reason
    # Accuracy is no easier to fool: always 'common' is right 70% of the time.
    by_accuracy = BASELINE.model_copy(update={"metric": "accuracy"})
    assert not apply_gate(by_accuracy, scored(truth, always_common), None).passed


def test_the_baseline_floor_is_the_same_every_time():
    truth = imbalanced_truth()
    predicted = np.where(np.arange(len(truth)) % 3 == 0, truth, 0)
    first = apply_gate(BASELINE, scored(truth, predicted), None)
    assert apply_gate(BASELINE, scored(truth, predicted), None) == first
