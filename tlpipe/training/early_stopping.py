"""Early stopping on validation: the best weights so far, and when to stop waiting for better.

Head training and fine-tuning both stop this way; what each epoch did is kept as a
:class:`TrainingHistory` (the learning curves are drawn from it).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field


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
    ``min_accuracy``, its validation accuracy is no lower than that (fine-tuning must not trade
    accuracy for calibration). ``patience`` epochs without a better one end the training."""

    patience: int
    best_state: dict
    best_loss: float
    min_accuracy: float | None = None
    stale: int = 0
    best_epoch: int = -1

    def update(self, epoch: int, loss: float, accuracy: float,
               state: Callable[[], dict]) -> bool:
        """Record one epoch; ``state`` gives its weights, copied only if it is the best."""
        better = loss < self.best_loss and (self.min_accuracy is None
                                            or accuracy >= self.min_accuracy)
        if better:
            self.best_state, self.best_loss = copy.deepcopy(state()), loss
            self.stale, self.best_epoch = 0, epoch
        else:
            self.stale += 1
        return better

    @property
    def should_stop(self) -> bool:
        return self.stale >= self.patience
