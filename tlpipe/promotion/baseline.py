"""What a model must beat to be worth serving, measured on the same test split it is scored on.

A fixed floor (0.8 macro-F1) suits one task and refuses every model of a harder one. The
baseline floor asks instead whether the model knows anything: its score must beat always
answering the split's most frequent class, and its predictions must agree with the labels more
than chance does (a permutation test: the same predictions against shuffled labels, so a model
that guesses at random, or leans on the priors alone, is refused however the classes are
balanced).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tlpipe.metrics import scores_of

PERMUTATIONS = 2000
BATCH_VALUES = 2_000_000  # shuffled labels held at once
SEED = 0  # fixed: the same split and predictions always give the same decision


@dataclass(frozen=True)
class Baseline:
    majority_class: int
    majority_score: float  # the metric of always answering the most frequent class
    chance_p: float  # the share of label shufflings that score at least as well

    def beaten_by(self, score: float, significance: float) -> bool:
        return score > self.majority_score and self.chance_p < significance


def measure_baseline(truth: np.ndarray, predicted: np.ndarray, num_classes: int,
                     metric: str) -> Baseline:
    truth, predicted = np.asarray(truth), np.asarray(predicted)
    majority = int(np.bincount(truth, minlength=num_classes).argmax())
    majority_score = float(scores_of(truth, np.full_like(truth, majority), num_classes,
                                     metric)[0])
    observed = scores_of(truth, predicted, num_classes, metric)[0]
    rng = np.random.default_rng(SEED)
    per_batch = max(1, BATCH_VALUES // max(1, len(truth)))  # memory bounded at any split size
    at_least = 0
    for start in range(0, PERMUTATIONS, per_batch):
        shuffled = np.stack([rng.permutation(truth)
                             for _ in range(min(per_batch, PERMUTATIONS - start))])
        at_least += int((scores_of(shuffled, predicted, num_classes, metric)
                         >= observed - 1e-12).sum())
    return Baseline(majority, majority_score, (1 + at_least) / (1 + PERMUTATIONS))
