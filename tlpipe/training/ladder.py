"""The head ladder: cheap classifiers on cached features, one of them chosen by validation.

Candidates: every kind of ``training.head_kinds`` the settings name, with each of its own
settings (a logistic probe per L2 strength, k-nearest neighbours per k). Each is fitted on
the plain view of the training images alone, and on the plain and the augmented views together
(augmentation helps some data and hurts other: flipped digits).
Candidates are scored on plain views of held-out images: the validation split, or, when it is
too small to tell them apart, stratified k-fold cross-validation over the training and
validation images (all views of one image in the same fold). The test split is never read.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import StratifiedGroupKFold
from torch import nn

from tlpipe.config import HeadConfig
from tlpipe.devices import CPU
from tlpipe.training.cached import Features
from tlpipe.training.early_stopping import TrainingHistory
from tlpipe.training.head_kinds import KINDS, head_kind
from tlpipe.training.heads import HeadSpec


@dataclass(frozen=True)
class Candidate:
    kind: str               # logistic | linear | mlp | knn
    settings: dict = field(default_factory=dict)  # "views": plain | augmented, C, k

    @property
    def name(self) -> str:
        return " ".join([self.kind, *(f"{k}={v}" for k, v in self.settings.items())])


@dataclass
class Ranked:
    """One row of the leaderboard."""

    candidate: str
    kind: str
    settings: dict
    score: float        # mean selection metric over the protocol's folds
    score_std: float
    seconds: float      # fitting and scoring, all folds
    protocol: str       # "validation" or "5-fold CV"
    chosen: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def candidates(config: HeadConfig, augmented: bool = True) -> list[Candidate]:
    """Every rung, in ladder order; without ``augmented`` views stored (``features.views:
    0``) the candidates fitted on them would repeat the plain ones, so there are none."""
    views = [v for v in config.train_views if augmented or v == "plain"] or ["plain"]
    return [Candidate(kind.name, {"views": view, **settings})
            for kind in KINDS.values() if kind.name in config.candidates
            for view in views for settings in kind.grid(config)]


def fit(candidate: Candidate, train: Features, val: Features | None, num_classes: int,
        config: HeadConfig, seed: int, device: torch.device = CPU,
        ) -> tuple[nn.Module, HeadSpec, TrainingHistory]:
    """The candidate fitted on its views of ``train``, as a torch head on the CPU (``val`` is
    for early stopping of the trained heads only, which train on ``device``); also its spec
    and its training history (empty but for the trained heads)."""
    train = train.for_training(candidate.settings.get("views", "augmented"))
    own = {key: value for key, value in candidate.settings.items() if key != "views"}
    return head_kind(candidate.kind).fit(train, val, num_classes, own, config, seed, device)


def score(head: nn.Module, data: Features, metric: str) -> float:
    with torch.no_grad():
        predicted = head.eval()(data.x).argmax(1).numpy()
    truth = data.y.numpy()
    if metric == "accuracy":
        return float(accuracy_score(truth, predicted))
    return float(f1_score(truth, predicted, average="macro", zero_division=0))


def select(train: Features, val: Features | None, num_classes: int, config: HeadConfig,
           seed: int, device: torch.device = CPU) -> tuple[Candidate, list[Ranked]]:
    """Score every candidate by the protocol the data allows; the best one, and the table.
    Without ``val``, always by cross-validation over ``train``."""
    train = _sample_images(train, config.selection_train_images, seed)
    val = _sample_images(val, config.selection_val_images, seed) if val is not None else None
    val_images = len(np.unique(val.groups)) if val is not None else 0
    if val is None or val_images < config.min_val_images:
        pooled = Features.join(train, val) if val is not None else train
        folds = [(pooled.take(fit_on), pooled.take(held_out).plain())
                 for fit_on, held_out in _group_splits(pooled, config.cv_folds, seed)]
        protocol = f"{len(folds)}-fold CV"
    else:
        folds, protocol = [(train, val.plain())], "validation"
    ladder, board = candidates(config, train.has_augmented), []
    for candidate in ladder:
        start = time.perf_counter()
        scores = [_fit_and_score(candidate, fit_on, held_out, num_classes, config, seed, device)
                  for fit_on, held_out in folds]
        board.append(Ranked(candidate.name, candidate.kind, candidate.settings,
                            float(np.mean(scores)), float(np.std(scores)),
                            time.perf_counter() - start, protocol))
    best = max(range(len(board)), key=lambda i: (board[i].score, -i))
    board[best].chosen = True
    return ladder[best], board


def probe_score(data: Features, num_classes: int, seed: int) -> float:
    """How well ``data`` separates its classes: the logistic probe's best cross-validated
    score over its default grid (the same for every caller, whatever ``head`` says)."""
    probe = HeadConfig(candidates=["logistic"], train_views=["plain"])
    _, board = select(data, None, num_classes, probe, seed)
    return max(row.score for row in board)


def _fit_and_score(candidate: Candidate, fit_on: Features, held_out: Features,
                   num_classes: int, config: HeadConfig, seed: int, device: torch.device
                   ) -> float:
    stopping = None
    if head_kind(candidate.kind).early_stopping:  # on part of the fitting data
        fit_on, stopping = _split_off(fit_on, config.cv_folds, seed)
    head, _, _ = fit(candidate, fit_on, stopping, num_classes, config, seed, device)
    return score(head, held_out, config.selection_metric)


def _sample_images(data: Features, limit: int, seed: int) -> Features:
    """At most ``limit`` images (with all their views), each class in proportion."""
    groups, first = np.unique(data.groups, return_index=True)
    if len(groups) <= limit:
        return data
    rng = np.random.default_rng(seed)
    labels = data.y.numpy()[first]
    chosen = []
    for label in np.unique(labels):
        members = groups[labels == label]
        take = max(1, round(limit * len(members) / len(groups)))
        chosen.append(rng.choice(members, size=min(take, len(members)), replace=False))
    return data.take(np.flatnonzero(np.isin(data.groups, np.concatenate(chosen))))


def _split_off(data: Features, parts: int, seed: int) -> tuple[Features, Features]:
    """One of ``parts`` groups of images held out (plain views, for early stopping)."""
    kept, held = next(_group_splits(data, parts, seed + 1))
    return data.take(kept), data.take(held).plain()


def _group_splits(data: Features, parts: int, seed: int) -> Iterator[tuple]:
    """Stratified splits that keep every view of an image on one side."""
    images = len(np.unique(data.groups))
    if images < 2:
        raise ValueError(f"{images} image(s): too few to hold any out for validation")
    splitter = StratifiedGroupKFold(n_splits=min(parts, images), shuffle=True,
                                    random_state=seed)
    with warnings.catch_warnings():  # a class with fewer images than folds: that is allowed
        warnings.simplefilter("ignore", UserWarning)
        yield from splitter.split(data.x.numpy(), data.y.numpy(), data.groups)


def leaderboard_lines(rows: list[dict], metric: str) -> list[str]:
    """The leaderboard as aligned text, best first."""
    lines = [f"{'candidate':<34} {metric:>9} {'± std':>6} {'seconds':>8}  protocol"]
    for row in sorted(rows, key=lambda row: -row["score"]):
        lines.append(f"{row['candidate']:<34} {row['score']:>9.4f} {row['score_std']:>6.3f} "
                     f"{row['seconds']:>8.2f}  {row['protocol']}"
                     + ("  <- chosen" if row["chosen"] else ""))
    return lines
