"""Classifier heads on backbone features: their shapes, one registry of architectures.

A head is described by a :class:`HeadSpec` (what the model file records, so loading needs no
settings) and built by :func:`build_head`. How each kind is fitted, and which the ladder tries,
is ``training.head_kinds``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional


def class_order(labels) -> list[str]:
    """The head's output order: class names sorted, the same in every stage and model."""
    return sorted(set(labels))


@dataclass(frozen=True)
class HeadSpec:
    kind: str                 # an architecture: linear | mlp | knn
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

    @property
    def fine_tunable(self) -> bool:
        """Whether it has weights that fine-tuning can go on training."""
        return ARCHITECTURES[self.kind].fine_tunable


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


@dataclass(frozen=True)
class Architecture:
    build: Callable[[HeadSpec], nn.Module]
    fine_tunable: bool


def _linear(spec: HeadSpec) -> nn.Module:
    return nn.Sequential(nn.Dropout(spec.dropout), nn.Linear(spec.in_features, spec.num_classes))


def _mlp(spec: HeadSpec) -> nn.Module:
    return nn.Sequential(
        nn.Dropout(spec.dropout), nn.Linear(spec.in_features, spec.hidden_dim), nn.GELU(),
        nn.Dropout(spec.dropout), nn.Linear(spec.hidden_dim, spec.num_classes),
    )


def _knn(spec: HeadSpec) -> nn.Module:
    return NearestNeighbourHead(spec.in_features, spec.num_classes, spec.references, spec.k)


ARCHITECTURES: dict[str, Architecture] = {
    "linear": Architecture(_linear, fine_tunable=True),
    "mlp": Architecture(_mlp, fine_tunable=True),
    "knn": Architecture(_knn, fine_tunable=False),  # remembered vectors, no weights
}


def build_head(spec: HeadSpec) -> nn.Module:
    if spec.kind not in ARCHITECTURES:
        raise ValueError(f"head kind {spec.kind!r}: not one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[spec.kind].build(spec)


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights, mean 1, so a rare class counts as much as a common one."""
    counts = torch.bincount(labels, minlength=num_classes).float().clamp(min=1)
    weights = counts.sum() / (num_classes * counts)
    return weights / weights.mean()
