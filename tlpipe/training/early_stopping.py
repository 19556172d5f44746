"""Early stopping on validation: the best weights so far, and when to stop waiting for better.

Head training and fine-tuning both stop this way; what each epoch did is kept as a
:class:`TrainingHistory` (the learning curves are drawn from it).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class TrainingHistory:
    epochs: list[dict] = field(default_factory=list)  # {"epoch", "train_loss", "val_loss", ...}
    best_epoch: int = -1  # -1: no epoch beat the start
    start: dict | None = None  # validation figures of the model before the first epoch

    def record(self, **values: float) -> None:
        self.epochs.append(values)


@dataclass
class EarlyStopping:
    """An epoch is better when its validation loss is lower than the best so far and, with
    ``min_score``, its validation score (accuracy or macro-F1, the selection metric) is no
    lower than that (fine-tuning must not trade the metric for calibration). ``patience``
    epochs without a better one end the training."""

    patience: int
    best_state: dict
    best_loss: float
    min_score: float | None = None
    stale: int = 0
    best_epoch: int = -1

    def update(self, epoch: int, loss: float, score: float,
               state: Callable[[], dict]) -> bool:
        """Record one epoch; ``state`` gives its weights, copied only if it is the best."""
        better = loss < self.best_loss and (self.min_score is None or score >= self.min_score)
        if better:
            self.best_state, self.best_loss = copy.deepcopy(state()), loss
            self.stale, self.best_epoch = 0, epoch
        else:
            self.stale += 1
        return better

    @property
    def should_stop(self) -> bool:
        return self.stale >= self.patience


class ValidationScores:
    """Validation figures summed batch by batch: each class's summed loss and the confusion
    matrix (rows: the true class), so that processes that each scored a share can add theirs."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.totals = torch.zeros(num_classes * (num_classes + 1), dtype=torch.float64)

    def add(self, losses: torch.Tensor, predicted: torch.Tensor, truth: torch.Tensor) -> None:
        """One batch: each image's loss, predicted class and true class."""
        count, truth = self.num_classes, truth.cpu()
        self.totals[:count].index_add_(0, truth, losses.detach().double().cpu())
        self.totals[count:] += torch.bincount(truth * count + predicted.cpu(),
                                              minlength=count * count).double()

    def figures(self) -> dict[str, float]:
        """The class-balanced loss (each class's mean loss, averaged over the classes present,
        as the class-weighted training loss counts them), accuracy and macro-F1."""
        count = self.num_classes
        confusion = self.totals[count:].view(count, count)
        per_class, correct = confusion.sum(1), confusion.diag()
        present = per_class > 0
        f1 = 2 * correct / (per_class + confusion.sum(0)).clamp(min=1)
        return {"val_loss": float((self.totals[:count][present] / per_class[present]).mean())
                if present.any() else 0.0,
                "val_accuracy": float(correct.sum() / per_class.sum().clamp(min=1)),
                "val_macro_f1": float(f1[present].mean()) if present.any() else 0.0}
