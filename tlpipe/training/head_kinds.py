"""The kinds of head the ladder chooses from, in one registry: how each is fitted on cached
features, and which of its own settings it tries.

- logistic: a logistic-regression probe (L-BFGS, its L2 strength from a grid: the linear-probe
  recipe of open_clip and of Kornblith et al., "Do Better ImageNet Models Transfer Better?"),
  folded into a linear layer;
- linear and mlp: trained with AdamW and early stopping on held-out images;
- knn: k-nearest neighbours on cosine similarity.

The settings' names for them are ``config.HeadKind``; a test checks both name the same kinds.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from torch import nn
from torch.nn import functional

from tlpipe.config import HeadConfig
from tlpipe.training.cached import Features
from tlpipe.training.early_stopping import EarlyStopping, TrainingHistory
from tlpipe.training.heads import HeadSpec, build_head, class_weights

CONSTANT_SCALE = 1e-4  # a dimension whose std is below this times the median one is constant

SMALL_MATRIX = 20_000_000  # values: about 15k images of 1280 features
Fitted = tuple[nn.Module, HeadSpec, TrainingHistory]


@dataclass(frozen=True)
class HeadKind:
    name: str
    # (training features, held-out features for early stopping or None, classes, this
    # candidate's settings, the head settings, seed, device) -> head on the CPU, spec, history
    fit: Callable[[Features, Features | None, int, dict, HeadConfig, int, torch.device], Fitted]
    # Each candidate's own settings (the logistic probe's C, the neighbours' k).
    grid: Callable[[HeadConfig], list[dict]] = lambda config: [{}]
    # Fitted by gradient steps with early stopping: needs held-out images while it fits.
    early_stopping: bool = False


def _fit_logistic(train: Features, val: Features | None, num_classes: int, settings: dict,
                  config: HeadConfig, seed: int, device: torch.device) -> Fitted:
    """Multinomial logistic regression on standardised features, folded into one linear
    layer (the standardisation too), so it serves and fine-tunes like the linear head."""
    x = train.x.numpy().astype(np.float64)
    scaler = StandardScaler().fit(x)
    # Some dimensions are constant up to float32 rounding (all-MiniLM-L6-v2 has two with a
    # std of 1e-8, against 0.05 for the rest): standardised, their rounding noise would be
    # multiplied a millionfold, and so would any change fine-tuning makes to them. They are
    # left out (weight 0).
    std = np.sqrt(scaler.var_)
    scaler.scale_ = np.where(std > CONSTANT_SCALE * np.median(std), std, np.inf)
    model = LogisticRegression(C=settings["C"], max_iter=2000, random_state=seed,
                               class_weight="balanced" if config.class_weighting else None)
    # BLAS threads cost more than they save on small matrices (about 10x on the demo's);
    # large ones (the final fit at 100k images) use every core.
    with threadpool_limits(limits=1 if x.size < SMALL_MATRIX else None, user_api="blas"):
        model.fit(scaler.transform(x), train.y.numpy())
    weight, bias = _full_coefficients(model, num_classes)
    folded_weight = weight / scaler.scale_
    folded_bias = bias - folded_weight @ scaler.mean_
    spec = HeadSpec("linear", x.shape[1], num_classes)
    head = build_head(spec)
    with torch.no_grad():
        head[-1].weight.copy_(torch.from_numpy(folded_weight).float())
        head[-1].bias.copy_(torch.from_numpy(folded_bias).float())
    return head.eval(), spec, TrainingHistory()


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


def _fit_knn(train: Features, val: Features | None, num_classes: int, settings: dict,
             config: HeadConfig, seed: int, device: torch.device) -> Fitted:
    spec = HeadSpec("knn", train.x.shape[1], num_classes, k=settings["k"],
                    references=len(train))
    head = build_head(spec)
    head.remember(train.x, train.y)
    return head, spec, TrainingHistory()


def _trained(architecture: str) -> Callable[..., Fitted]:
    def fit(train: Features, val: Features | None, num_classes: int, settings: dict,
            config: HeadConfig, seed: int, device: torch.device) -> Fitted:
        if val is None or len(val) == 0:
            raise ValueError("a trained head needs validation features for early stopping")
        spec = HeadSpec(architecture, train.x.shape[1], num_classes, config.hidden_dim,
                        config.dropout)
        head, history = train_head(train.x, train.y, val.x, val.y, spec, config, seed, device)
        return head, spec, history
    return fit


def evaluate_logits(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    loss = functional.cross_entropy(logits, labels).item()
    accuracy = (logits.argmax(1) == labels).float().mean().item()
    return loss, accuracy


def train_head(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor,
               val_y: torch.Tensor, spec: HeadSpec, config: HeadConfig, seed: int,
               device: torch.device | None = None) -> tuple[nn.Module, TrainingHistory]:
    """Mini-batch AdamW on ``device`` with early stopping on validation loss; returns the
    best head, on the CPU."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    device = device or torch.device("cpu")
    train_x, train_y, val_x, val_y = (t.to(device) for t in (train_x, train_y, val_x, val_y))
    head = build_head(spec).to(device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay)
    weights = class_weights(train_y, spec.num_classes) if config.class_weighting else None
    history = TrainingHistory()
    stopping = EarlyStopping(config.patience, copy.deepcopy(head.state_dict()), float("inf"))
    for epoch in range(config.epochs):
        head.train()
        order = torch.randperm(len(train_x), generator=generator).to(device)
        total = 0.0
        for start in range(0, len(order), config.batch_size):
            batch = order[start:start + config.batch_size]
            loss = functional.cross_entropy(head(train_x[batch]), train_y[batch], weight=weights,
                                            label_smoothing=config.label_smoothing)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        head.eval()
        with torch.no_grad():
            val_loss, val_accuracy = evaluate_logits(head(val_x), val_y)
        history.record(epoch=epoch, train_loss=total / len(order), val_loss=val_loss,
                       val_accuracy=val_accuracy)
        stopping.update(epoch, val_loss, val_accuracy, head.state_dict)
        if stopping.should_stop:
            break
    history.best_epoch = stopping.best_epoch
    head.load_state_dict(stopping.best_state)
    return head.eval().cpu(), history


# In ladder order: of two candidates that score the same, the earlier wins (the simpler
# model, the cheaper fit).
KINDS: dict[str, HeadKind] = {kind.name: kind for kind in (
    HeadKind("logistic", _fit_logistic, grid=lambda config: [{"C": c} for c in config.logistic_c]),
    HeadKind("linear", _trained("linear"), early_stopping=True),
    HeadKind("knn", _fit_knn, grid=lambda config: [{"k": k} for k in config.knn_k]),
    HeadKind("mlp", _trained("mlp"), early_stopping=True),
)}


def head_kind(name: str) -> HeadKind:
    if name not in KINDS:
        raise ValueError(f"head kind {name!r}: not one of {list(KINDS)}")
    return KINDS[name]
