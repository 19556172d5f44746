"""Cached feature vectors as heads are fitted on them: with their labels, the image each came
from and which view of it it is."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from tlpipe.vectors.store import PLAIN_VIEW, FeatureStore, load_split


@dataclass(frozen=True)
class Features:
    x: torch.Tensor
    y: torch.Tensor
    groups: np.ndarray   # one id per image: its views share it
    views: np.ndarray    # 0 for the plain view, 1.. for augmented ones

    def __len__(self) -> int:
        return len(self.y)

    def take(self, index: np.ndarray) -> Features:
        return Features(self.x[index], self.y[index], self.groups[index], self.views[index])

    def plain(self) -> Features:
        return self.take(np.flatnonzero(self.views == PLAIN_VIEW))

    def for_training(self, views: str) -> Features:
        return self.plain() if views == "plain" else self

    @property
    def has_augmented(self) -> bool:
        return bool((self.views != PLAIN_VIEW).any())

    @staticmethod
    def from_plan(plan: pd.DataFrame, store: FeatureStore, split: str, classes: list[str]
                  ) -> Features:
        """The stored vectors of every row of ``plan`` in ``split``."""
        x, y = load_split(plan, store, split, classes)
        rows = plan[plan["split"] == split]
        return Features(x, y, rows["sha256"].to_numpy(), rows["view"].to_numpy())

    @staticmethod
    def join(a: Features, b: Features) -> Features:
        return Features(torch.cat([a.x, b.x]), torch.cat([a.y, b.y]),
                        np.concatenate([a.groups, b.groups]),
                        np.concatenate([a.views, b.views]))
