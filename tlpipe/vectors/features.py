"""Frozen-backbone features, computed once per (image content, weights, preprocessing, view).

A vector's key names everything that decides its value, the code that turns a file into it
included (every file of this ``vectors`` wing), so a second run over the same images does no
forward pass, a new image costs one forward per view, and a change of transform or decoding
code is never served a stale vector.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from tlpipe.config import AugmentConfig, FeaturesConfig, Params
from tlpipe.fsio import sha256_text, write_atomic
from tlpipe.vectors.augment import train_decode_side, train_transform
from tlpipe.vectors.backbones import Backbone
from tlpipe.vectors.code_digest import vector_code_digest
from tlpipe.vectors.engines import (
    check_fidelity,
    engine_identity,
    engine_placement,
    feature_engine,
    placed,
)
from tlpipe.vectors.preprocess import ImageFolderRows, iterate_batches
from tlpipe.vectors.store import PLAIN_VIEW, FeatureStore, view_seed


@dataclass(frozen=True)
class FeatureSpec:
    """Everything besides the image that decides a feature vector's value."""

    weights_digest: str
    preprocessing: dict
    augment: dict
    engine: str  # engines.engine_identity: engine, precision and device type
    seed: int
    code_digest: str = field(default_factory=vector_code_digest)

    def key(self, sha256: str, view: int) -> str:
        # The augmentation policy and seed only matter for augmented views.
        policy = (self.augment, self.seed) if view != PLAIN_VIEW else None
        return sha256_text(sha256, self.weights_digest, sorted(self.preprocessing.items()),
                           policy, self.engine, view, self.code_digest)


def spec_on(params: Params, backbone: Backbone, device: torch.device) -> FeatureSpec:
    """The spec of the vectors ``backbone`` makes on ``device`` under ``params``."""
    return FeatureSpec(
        weights_digest=backbone.weights_digest, preprocessing=backbone.preprocessing.to_dict(),
        augment=params.augment.model_dump(mode="json"),
        engine=engine_identity(params.features, device), seed=params.seed)


@dataclass
class ExtractionStats:
    computed: int  # backbone forward passes, one per image view
    cached: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.computed / self.seconds if self.seconds else 0.0


def plan_views(manifest: pd.DataFrame, views: int, spec: FeatureSpec) -> pd.DataFrame:
    """One row per feature vector needed: training images get their plain view and ``views``
    augmented ones, the others their plain view."""
    rows = []
    for row in manifest.itertuples(index=False):
        wanted = (PLAIN_VIEW, *range(1, views + 1)) if row.split == "train" else (PLAIN_VIEW,)
        rows.extend({"path": row.path, "label": row.label, "split": row.split,
                     "sha256": row.sha256, "view": view, "key": spec.key(row.sha256, view)}
                    for view in wanted)
    return pd.DataFrame(rows, columns=["path", "label", "split", "sha256", "view", "key"])


def missing_views(plan: pd.DataFrame, store: FeatureStore) -> pd.DataFrame:
    """The rows of ``plan`` whose vector the store lacks, one per key; a stored vector counts
    only if its chunk passes its digests (``FeatureStore.verify``)."""
    store.verify(plan["key"].tolist())
    return plan[~plan["key"].isin(store.keys())].drop_duplicates("key")


def extract_features(plan: pd.DataFrame, data_root: Path, backbone: Backbone,
                     config: FeaturesConfig, augment: AugmentConfig, seed: int,
                     store: FeatureStore, device: torch.device) -> ExtractionStats:
    """Compute and store every view of ``plan`` the store lacks; stored views cost nothing."""
    start = time.perf_counter()
    missing = missing_views(plan, store)
    if len(missing):
        with placed(backbone.model, *engine_placement(config, device)):
            _compute(missing, data_root, backbone, config, augment, seed, store, device)
    return ExtractionStats(computed=len(missing), cached=len(plan) - len(missing),
                           seconds=time.perf_counter() - start)


def _compute(missing: pd.DataFrame, data_root: Path, backbone: Backbone, config: FeaturesConfig,
             augment: AugmentConfig, seed: int, store: FeatureStore, device: torch.device
             ) -> None:
    engine = feature_engine(backbone, config, config.engine_dir.expanduser(), device)
    with store.writer() as writer:
        for is_plain, group in missing.groupby(missing["view"] == PLAIN_VIEW):
            paths = group["path"].tolist()
            dataset = (ImageFolderRows.for_evaluation(data_root, paths, backbone.preprocessing)
                       if is_plain else ImageFolderRows(
                           data_root, paths, train_transform(backbone.preprocessing, augment),
                           train_decode_side(backbone.preprocessing, augment),
                           [view_seed(s, v, seed) for s, v in zip(group["sha256"], group["view"],
                                                                  strict=True)]))
            keys = group["key"].to_numpy()
            label = "features (plain)" if is_plain else "features (augmented)"
            with tqdm(total=len(dataset), desc=label, unit="img") as progress:
                for images, indices in iterate_batches(dataset, config.batch_size,
                                                       config.num_workers,
                                                       pin_memory=engine.pin_memory):
                    check_fidelity(engine, backbone, images, config)  # before any is kept
                    writer.add(keys[indices.numpy()], engine.forward(images))
                    progress.update(len(indices))


def shard_of(plan: pd.DataFrame, index: int, count: int) -> pd.DataFrame:
    """Part ``index`` of ``count`` of the plan, by cache key: a view always falls in the same
    shard, whatever else the plan holds."""
    if not 0 <= index < count:
        raise ValueError(f"shard {index} of {count}: the index must be in [0, {count})")
    return plan[[int(key[:8], 16) % count == index for key in plan["key"]]]


def save_plan(plan: pd.DataFrame, target: Path) -> Path:
    return write_atomic(target, lambda path: plan.to_parquet(path, index=False))
