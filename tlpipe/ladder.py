"""The head ladder: cheap classifiers on cached features, one of them chosen by validation.

Candidates: a logistic-regression probe (L-BFGS, its L2 strength from a grid: the linear-probe
recipe of open_clip and of Kornblith et al., "Do Better ImageNet Models Transfer Better?"),
the linear and MLP heads trained with AdamW, and k-nearest neighbours on cosine similarity.
Each is fitted on the plain view of the training images alone, and on the plain and the
augmented views together (augmentation helps some data and hurts other: flipped digits).
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
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from torch import nn

from tlpipe.config import HeadConfig
from tlpipe.devices import CPU
from tlpipe.feature_store import PLAIN_VIEW, FeatureStore, load_split
from tlpipe.head import HeadSpec, TrainingHistory, build_head, train_head

# The earlier of two candidates wins a tie: the simpler model, the cheaper fit.
LADDER_ORDER = ("logistic", "linear", "knn", "mlp")
SMALL_MATRIX = 20_000_000  # values: about 15k images of 1280 features


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


@dataclass(frozen=True)
class Features:
    """Feature vectors with their labels, the image each came from and which view it is."""

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


def candidates(config: HeadConfig) -> list[Candidate]:
    ladder = []
    for kind in sorted(config.candidates, key=LADDER_ORDER.index):
        for views in config.train_views:
            if kind == "logistic":
                ladder += [Candidate(kind, {"views": views, "C": c}) for c in config.logistic_c]
            elif kind == "knn":
                ladder += [Candidate(kind, {"views": views, "k": k}) for k in config.knn_k]
            else:
                ladder.append(Candidate(kind, {"views": views}))
    return ladder


def fit(candidate: Candidate, train: Features, val: Features | None, num_classes: int,
        config: HeadConfig, seed: int, device: torch.device = CPU,
        ) -> tuple[nn.Module, HeadSpec, TrainingHistory]:
    """The candidate fitted on its views of ``train``, as a torch head on the CPU (``val`` is
    for early stopping of the trained heads only, which train on ``device``); also its spec
    and its training history (empty but for the trained heads)."""
    train = train.for_training(candidate.settings.get("views", "augmented"))
    in_features = train.x.shape[1]
    if candidate.kind == "logistic":
        return (*_logistic(train, num_classes, candidate.settings["C"], config, seed),
                TrainingHistory())
    if candidate.kind == "knn":
        spec = HeadSpec("knn", in_features, num_classes, k=candidate.settings["k"],
                        references=len(train))
        head = build_head(spec)
        head.remember(train.x, train.y)
        return head, spec, TrainingHistory()
    if val is None or len(val) == 0:
        raise ValueError("a trained head needs validation features for early stopping")
    spec = HeadSpec(candidate.kind, in_features, num_classes, config.hidden_dim,
                    config.dropout)
    head, history = train_head(train.x, train.y, val.x, val.y, spec, config, seed, device)
    return head, spec, history


def _logistic(train: Features, num_classes: int, c: float, config: HeadConfig, seed: int
              ) -> tuple[nn.Module, HeadSpec]:
    """Multinomial logistic regression on standardised features, folded into one linear
    layer (the standardisation too), so it serves and fine-tunes like the linear head."""
    x = train.x.numpy().astype(np.float64)
    scaler = StandardScaler().fit(x)
    model = LogisticRegression(C=c, max_iter=2000, random_state=seed,
                               class_weight="balanced" if config.class_weighting else None)
    # BLAS threads cost more than they save on small matrices (about 10x on the demo's);
    # large ones (the final fit at 100k images) use every core.
    with threadpool_limits(limits=1 if x.size < SMALL_MATRIX else None, user_api="blas"):
        model.fit(scaler.transform(x), train.y.numpy())
    weight, bias = _full_coefficients(model, num_classes)
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    folded_weight = weight / scale
    folded_bias = bias - folded_weight @ scaler.mean_
    spec = HeadSpec("linear", x.shape[1], num_classes)
    head = build_head(spec)
    with torch.no_grad():
        head[-1].weight.copy_(torch.from_numpy(folded_weight).float())
        head[-1].bias.copy_(torch.from_numpy(folded_bias).float())
    return head.eval(), spec


def _full_coefficients(model: LogisticRegression, num_classes: int
                       ) -> tuple[np.ndarray, np.ndarray]:
    """One row per class, whatever classes the fit saw (binary fits give one row)."""
    weight = np.zeros((num_classes, model.coef_.shape[1]))
    bias = np.full(num_classes, -1e4)  # a class absent from the data is never predicted
    if model.coef_.shape[0] == 1:
        rows = np.vstack([-model.coef_[0] / 2, model.coef_[0] / 2])
        biases = np.array([-model.intercept_[0] / 2, model.intercept_[0] / 2])
    else:
        rows, biases = model.coef_, model.intercept_
    weight[model.classes_], bias[model.classes_] = rows, biases
    return weight, bias


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
    ladder, board = candidates(config), []
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
    if candidate.kind in ("linear", "mlp"):  # early stopping on part of the fitting data
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
