"""The classifier head, trained on cached features in seconds."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional

from tlpipe.config import HeadConfig


def class_order(labels) -> list[str]:
    """The head's output order: class names sorted, the same in every stage and model."""
    return sorted(set(labels))


def build_head(config: HeadConfig, in_features: int, num_classes: int) -> nn.Module:
    if config.kind == "linear":
        return nn.Sequential(nn.Dropout(config.dropout), nn.Linear(in_features, num_classes))
    return nn.Sequential(
        nn.Dropout(config.dropout), nn.Linear(in_features, config.hidden_dim), nn.GELU(),
        nn.Dropout(config.dropout), nn.Linear(config.hidden_dim, num_classes),
    )


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights, mean 1, so a rare class counts as much as a common one."""
    counts = torch.bincount(labels, minlength=num_classes).float().clamp(min=1)
    weights = counts.sum() / (num_classes * counts)
    return weights / weights.mean()


@dataclass
class TrainingHistory:
    epochs: list[dict] = field(default_factory=list)  # {"epoch", "train_loss", "val_loss", ...}
    best_epoch: int = -1

    def record(self, **values: float) -> None:
        self.epochs.append(values)


def evaluate_logits(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    loss = functional.cross_entropy(logits, labels).item()
    accuracy = (logits.argmax(1) == labels).float().mean().item()
    return loss, accuracy


def train_head(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor,
               val_y: torch.Tensor, num_classes: int, config: HeadConfig, seed: int
               ) -> tuple[nn.Module, TrainingHistory]:
    """Mini-batch AdamW with early stopping on validation loss; returns the best head."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    head = build_head(config, train_x.shape[1], num_classes)
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay)
    weights = class_weights(train_y, num_classes) if config.class_weighting else None
    history = TrainingHistory()
    best_state, best_loss, stale = copy.deepcopy(head.state_dict()), float("inf"), 0
    for epoch in range(config.epochs):
        head.train()
        order = torch.randperm(len(train_x), generator=generator)
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
    return head.eval(), history
