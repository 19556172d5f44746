"""The promotion gate as a pure function: each rule alone, on hand-made per-image results."""

from __future__ import annotations

import pytest

from tlpipe.config import PromotionConfig
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
