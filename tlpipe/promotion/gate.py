"""The promotion gate: may a challenger replace the champion? Pure functions, no registry.

Both models are scored on the same images, so the comparison is paired: besides the floor (a
number, or by default beating the baselines of ``tlpipe.promotion.baseline`` on that split),
the improvement margin and the per-class recall guard, an exact McNemar test on per-image
correctness says whether the challenger's extra correct answers could be chance.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from math import comb

import numpy as np

from tlpipe.config import PromotionConfig
from tlpipe.metrics import compute_metrics, decide
from tlpipe.promotion.baseline import measure_baseline


@dataclass(frozen=True)
class Scores:
    """One model version on one test split."""

    version: str
    metrics: dict[str, float]          # accuracy, macro_f1, ece
    recall: dict[str, float]           # per class
    correct: list[bool] = field(repr=False)  # per test image, in the split's order
    # Class indices per test image (into ``recall``'s order), for the baseline floor.
    truth: list[int] = field(default_factory=list, repr=False)
    predicted: list[int] = field(default_factory=list, repr=False)

    @classmethod
    def from_probabilities(cls, version: str, y_true: np.ndarray, probabilities: np.ndarray,
                           classes: list[str], calibration_bins: int,
                           thresholds: list[float] | None = None) -> Scores:
        figures = compute_metrics(y_true, probabilities, classes, calibration_bins, thresholds)
        predicted = decide(probabilities, thresholds)
        return cls(version=version,
                   metrics={k: figures[k] for k in ("accuracy", "macro_f1", "ece")},
                   recall={name: v["recall"] for name, v in figures["per_class"].items()},
                   correct=(predicted == y_true).tolist(), truth=np.asarray(y_true).tolist(),
                   predicted=predicted.tolist())


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class GateResult:
    passed: bool
    checks: list[Check]

    @property
    def reason(self) -> str:
        failed = [c for c in self.checks if not c.passed]
        return "; ".join(c.detail for c in (failed or self.checks))

    @property
    def summary(self) -> str:
        """The outcome in a few words, e.g. ``failed: improvement, mcnemar``."""
        failed = [c.name for c in self.checks if not c.passed]
        return f"failed: {', '.join(failed)}" if failed else "passed all checks"

    def to_dict(self) -> dict:
        return {"passed": self.passed, "reason": self.reason, "summary": self.summary,
                "checks": [asdict(check) for check in self.checks]}


def mcnemar_exact_p(challenger_only: int, champion_only: int) -> float:
    """One-sided exact McNemar p-value: the chance of at least ``challenger_only`` wins among
    the discordant images if both models were equally good (a fair coin per discordant pair).
    """
    discordant = challenger_only + champion_only
    if discordant == 0:
        return 1.0
    tail = sum(comb(discordant, k) for k in range(challenger_only, discordant + 1))
    return tail / 2 ** discordant


def floor_check(rule: PromotionConfig, challenger: Scores) -> Check:
    """A fixed number, or (``baseline``) beating the majority class and chance on this split."""
    metric, value = rule.metric, challenger.metrics[rule.metric]
    if rule.floor != "baseline":
        return Check("floor", value >= rule.floor,
                     f"{metric} {value:.4f} {'>=' if value >= rule.floor else '<'} "
                     f"floor {rule.floor:.4f}")
    classes = list(challenger.recall)
    baseline = measure_baseline(np.array(challenger.truth), np.array(challenger.predicted),
                                len(classes), metric)
    passed = baseline.beaten_by(value, rule.significance)
    return Check("floor", passed, (
        f"{metric} {value:.4f} {'beats' if passed else 'does not beat'} the baselines on this "
        f"split: always {classes[baseline.majority_class]!r} {baseline.majority_score:.4f}; "
        f"chance (these predictions against shuffled labels) p={baseline.chance_p:.2g} (needs "
        f"> {baseline.majority_score:.4f} and p < {rule.significance}; or set promotion.floor "
        "to a number)"))


def apply_gate(rule: PromotionConfig, challenger: Scores, champion: Scores | None) -> GateResult:
    metric = rule.metric
    value = challenger.metrics[metric]
    checks = [floor_check(rule, challenger)]
    if champion is None:
        checks.append(Check("first_champion", True, "no champion yet"))
        return GateResult(all(c.passed for c in checks), checks)

    gain = value - champion.metrics[metric]
    checks.append(Check(
        "improvement", gain >= rule.min_improvement,
        f"{metric} {value:.4f} vs champion v{champion.version} "
        f"{champion.metrics[metric]:.4f}: {gain:+.4f} (needs >= {rule.min_improvement:+.4f})"))

    drops = {name: champion.recall[name] - challenger.recall.get(name, 0.0)
             for name in champion.recall}
    worst = max(drops, key=drops.get)
    checks.append(Check(
        "class_recall", drops[worst] <= rule.max_recall_drop,
        f"largest recall drop {drops[worst]:+.4f} on {worst!r} "
        f"(allowed {rule.max_recall_drop:.4f})"))

    pairs = list(zip(challenger.correct, champion.correct, strict=True))
    wins = sum(mine and not theirs for mine, theirs in pairs)
    losses = sum(theirs and not mine for mine, theirs in pairs)
    p_value = mcnemar_exact_p(wins, losses)
    checks.append(Check(
        "mcnemar", p_value < rule.significance,
        f"McNemar exact p={p_value:.4g} ({wins} images only the challenger gets right, "
        f"{losses} only the champion; needs p < {rule.significance})"))
    return GateResult(all(c.passed for c in checks), checks)
