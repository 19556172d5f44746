"""Fine-tuning a sentence encoder's top layers with the chosen head (the text path's
``finetune``), kept only if it beats the head on the frozen encoder on validation.

fastai's recipe, as the image path follows it: the head starts from the one the ladder chose,
the top ``unfreeze_blocks`` transformer layers train with it, each layer below the top at
``lr * layer_decay ** depth`` and the head at ``lr``; linear warm-up then cosine decay;
early stopping on the class-balanced validation loss, never at a lower selection metric
than the head's (``EarlyStopping``). A batch holds texts of similar length (the batches are
made once, in length order, and shuffled each epoch), so little of it is padding.
"""

from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass

import torch
from torch import nn

from tlpipe.config import FinetuneConfig
from tlpipe.training.early_stopping import EarlyStopping, TrainingHistory, ValidationScores
from tlpipe.vectors.text_encoder import TextEncoder


@dataclass
class TextFinetuneResult:
    encoder: TextEncoder  # the fine-tuned copy, or the frozen one when that was not beaten
    head: nn.Module
    improved: bool
    history: TrainingHistory
    layers: int  # transformer layers trained


def unfrozen_layers(setting: int | str, total: int) -> int:
    """``finetune.unfreeze_blocks``' first entry as a number of the encoder's layers."""
    if setting == "all":
        return total
    if setting == "half":
        return max(1, total // 2)
    return min(int(setting), total)


def finetune_text(encoder: TextEncoder, head: nn.Module, train: tuple[list[str], list[int]],
                  val: tuple[list[str], list[int]], num_classes: int, config: FinetuneConfig,
                  seed: int, device: torch.device, metric: str = "macro_f1",
                  ) -> TextFinetuneResult:
    """Fine-tune copies of ``encoder``'s top layers and ``head`` on ``train`` (texts, class
    indices); the best epoch on ``val`` if it beats the start, else the originals."""
    torch.manual_seed(seed)
    model, tuned_head = copy.deepcopy(encoder).to(device), copy.deepcopy(head).to(device)
    layers = unfrozen_layers(config.unfreeze_blocks[0], len(model.blocks))
    model.requires_grad_(False)
    groups = [{"params": list(tuned_head.parameters()), "lr": config.lr[0]}]
    for depth, block in enumerate(reversed(model.blocks[-layers:])):
        block.requires_grad_(True)
        groups.append({"params": list(block.parameters()),
                       "lr": config.lr[0] * config.layer_decay ** (depth + 1)})
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    train_batches = _batches(model, *train, config.batch_size)
    steps = max(1, config.epochs * len(train_batches))
    warmup = max(1, int(steps * config.warmup_fraction))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(
        (step + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))))
    history = TrainingHistory()
    history.start = _validate(model, tuned_head, val, num_classes, config.batch_size, device)
    key = f"val_{metric}"
    stopping = EarlyStopping(config.patience, {}, history.start["val_loss"],
                             min_score=history.start[key])
    order = random.Random(seed)
    for epoch in range(config.epochs):
        model.train()
        tuned_head.train()
        losses = []
        for ids, mask, labels in order.sample(train_batches, len(train_batches)):
            loss = nn.functional.cross_entropy(
                tuned_head(model(ids.to(device), mask.to(device))), labels.to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
        figures = _validate(model, tuned_head, val, num_classes, config.batch_size, device)
        history.record(epoch=epoch, train_loss=sum(losses) / len(losses), **figures)
        stopping.update(epoch, figures["val_loss"], figures[key], lambda: {
            "encoder": model.state_dict(), "head": tuned_head.state_dict()})
        if stopping.should_stop:
            break
    history.best_epoch = stopping.best_epoch
    if stopping.best_epoch < 0:
        return TextFinetuneResult(encoder, head, False, history, layers)
    model.load_state_dict(stopping.best_state["encoder"])
    tuned_head.load_state_dict(stopping.best_state["head"])
    return TextFinetuneResult(model.eval().cpu(), tuned_head.eval().cpu(), True, history, layers)


def _batches(encoder: TextEncoder, texts: list[str], labels: list[int], size: int
             ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Batches of token ids, attention masks and labels, made once: texts in order of length,
    so a batch is padded to little more than its shortest text."""
    encodings = encoder.unpadded(texts)
    order = sorted(range(len(texts)), key=lambda index: len(encodings[index].ids))
    batches = []
    for start in range(0, len(order), size):
        rows = order[start:start + size]
        longest = max(len(encodings[i].ids) for i in rows)
        ids = torch.zeros(len(rows), longest, dtype=torch.long)
        mask = torch.zeros(len(rows), longest, dtype=torch.long)
        for row, index in enumerate(rows):
            tokens = encodings[index].ids
            ids[row, :len(tokens)] = torch.tensor(tokens)
            mask[row, :len(tokens)] = 1
        batches.append((ids, mask, torch.tensor([labels[i] for i in rows])))
    return batches


def _validate(encoder: TextEncoder, head: nn.Module, val: tuple[list[str], list[int]],
              num_classes: int, batch_size: int, device: torch.device) -> dict[str, float]:
    encoder.eval()
    head.eval()
    scores = ValidationScores(num_classes)
    with torch.inference_mode():
        for ids, mask, labels in _batches(encoder, *val, batch_size):
            logits = head(encoder(ids.to(device), mask.to(device)))
            scores.add(nn.functional.cross_entropy(logits, labels.to(device), reduction="none"),
                       logits.argmax(1), labels)
    return scores.figures()
