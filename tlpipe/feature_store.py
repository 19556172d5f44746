"""The feature store: one vector per key, content-addressed, each written atomically.

Each feature vector is one ``.npy`` file named by its key, so a killed run leaves only whole
entries, and a vector computed once (by any run, shard or experiment) is never computed again.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tlpipe.fsio import write_atomic


class FeatureCache:
    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.npy"

    def __contains__(self, key: str) -> bool:
        return self.path(key).is_file()

    def get(self, key: str) -> np.ndarray:
        return np.load(self.path(key), allow_pickle=False)

    def put(self, key: str, vector: np.ndarray) -> None:
        def save(temporary: Path) -> None:
            with open(temporary, "wb") as handle:
                np.save(handle, vector.astype(np.float32), allow_pickle=False)

        write_atomic(self.path(key), save)


def load_split(plan: pd.DataFrame, cache: FeatureCache, split: str, classes: list[str]
               ) -> tuple[torch.Tensor, torch.Tensor]:
    rows = plan[plan["split"] == split]
    if rows.empty:
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    features = torch.from_numpy(np.stack([cache.get(key) for key in rows["key"]]))
    labels = torch.tensor([classes.index(label) for label in rows["label"]], dtype=torch.long)
    return features, labels
