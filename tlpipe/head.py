"""Classifier heads on backbone features: their shapes, and training one in seconds.

A head is described by a :class:`HeadSpec` (what the model file records, so loading needs no
settings) and built by :func:`build_head`: a linear layer, a small MLP, or k-nearest
neighbours over remembered training vectors.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.nn import functional

from tlpipe.config import HeadConfig


def class_order(labels) -> list[str]:
    """The head's output order: class names sorted, the same in every stage and model."""
    return sorted(set(labels))


@dataclass(frozen=True)
class HeadSpec:
    kind: str                 # linear | mlp | knn
    in_features: int
    num_classes: int
    hidden_dim: int = 0       # mlp
    dropout: float = 0.0      # linear, mlp (only while training)
    k: int = 0                # knn: neighbours that vote
    references: int = 0       # knn: remembered training vectors

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict, in_features: int, num_classes: int) -> HeadSpec:
        """Also reads the head settings that models registered before HeadSpec recorded."""
        return cls(values.get("kind", "linear"), in_features, num_classes,
                   int(values.get("hidden_dim") or 0), float(values.get("dropout") or 0.0),
                   int(values.get("k") or 0), int(values.get("references") or 0))


class NearestNeighbourHead(nn.Module):
    """k-nearest neighbours by cosine similarity, as a module: its outputs are the log of
    smoothed vote shares, so a softmax over them gives the vote shares back."""

    def __init__(self, in_features: int, num_classes: int, references: int, k: int):
        super().__init__()
        self.num_classes, self.k = num_classes, k
        self.register_buffer("keys", torch.zeros(references, in_features))
        self.register_buffer("labels", torch.zeros(references, dtype=torch.long))

    def remember(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        self.keys.copy_(functional.normalize(features.float(), dim=1))
        self.labels.copy_(labels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        similarity = functional.normalize(features.float(), dim=1) @ self.keys.T
        nearest = similarity.topk(min(self.k, len(self.keys)), dim=1).indices
        votes = functional.one_hot(self.labels[nearest], self.num_classes).sum(1).float()
        return torch.log((votes + 0.5) / (votes.sum(1, keepdim=True) + 0.5 * self.num_classes))


def build_head(spec: HeadSpec) -> nn.Module:
    if spec.kind == "knn":
        return NearestNeighbourHead(spec.in_features, spec.num_classes, spec.references, spec.k)
    if spec.kind == "linear":
        return nn.Sequential(nn.Dropout(spec.dropout), nn.Linear(spec.in_features,
                                                                 spec.num_classes))
    return nn.Sequential(
        nn.Dropout(spec.dropout), nn.Linear(spec.in_features, spec.hidden_dim), nn.GELU(),
        nn.Dropout(spec.dropout), nn.Linear(spec.hidden_dim, spec.num_classes),
    )


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights, mean 1, so a rare class counts as much as a common one."""
    counts = torch.bincount(labels, minlength=num_classes).float().clamp(min=1)
    weights = counts.sum() / (num_classes * counts)
    return weights / weights.mean()


@dataclass
class TrainingHistory:
    epochs: list[dict] = field(default_factory=list)  # {"epoch", "train_loss", "val_loss", ...}
    best_epoch: int = -1  # -1: no epoch beat the start
    start: dict | None = None  # validation figures of the model before the first epoch

    def record(self, **values: float) -> None:
        self.epochs.append(values)


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
    num_classes = spec.num_classes
    device = device or torch.device("cpu")
    train_x, train_y, val_x, val_y = (t.to(device) for t in (train_x, train_y, val_x, val_y))
    head = build_head(spec).to(device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay)
    weights = class_weights(train_y, num_classes) if config.class_weighting else None
    history = TrainingHistory()
    best_state, best_loss, stale = copy.deepcopy(head.state_dict()), float("inf"), 0
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
        if val_loss < best_loss:
            best_state, best_loss, stale = copy.deepcopy(head.state_dict()), val_loss, 0
            history.best_epoch = epoch
        else:
            stale += 1
            if stale >= config.patience:
                break
    head.load_state_dict(best_state)
    return head.eval().cpu(), history
