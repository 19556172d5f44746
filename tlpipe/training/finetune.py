"""Fine-tuning: the backbone plus its trained head, top blocks unfrozen, fastai-style.

Learning rates shrink with depth, BatchNorm running statistics never move (the pretrained
statistics are better estimates than a few hundred images give), early stopping keeps the best
epoch (``training.early_stopping``), and a checkpoint after every epoch lets a killed run
resume exactly (``training.checkpoint``).
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import distributed, nn
from torch.nn import functional
from tqdm.auto import tqdm

from tlpipe.config import AugmentConfig, FinetuneConfig
from tlpipe.fsio import sha256_text
from tlpipe.training import checkpoint as checkpoint_file
from tlpipe.training.distributed import Rank
from tlpipe.training.early_stopping import EarlyStopping, TrainingHistory
from tlpipe.training.heads import class_weights
from tlpipe.training.model import Classifier
from tlpipe.vectors.augment import train_decode_side, train_transform
from tlpipe.vectors.backbones import Backbone
from tlpipe.vectors.engines import autocast, precision_on, to_device
from tlpipe.vectors.preprocess import (
    GLOBAL_RNG,
    ImageFolderRows,
    eval_decode_side,
    eval_transform,
    iterate_batches,
)


def parameter_groups(model: Classifier, blocks: list[list[nn.Parameter]],
                     config: FinetuneConfig) -> list[dict]:
    """Freeze everything, then unfreeze the head and the top blocks, lr shrinking with depth."""
    model.requires_grad_(False)
    groups = [{"name": "head", "params": list(model.head.parameters()), "lr": config.lr}]
    unfrozen = blocks[-config.unfreeze_blocks:]
    for depth, block in enumerate(reversed(unfrozen), start=1):
        groups.append({"name": f"block-{len(blocks) - depth}", "params": block,
                       "lr": config.lr * config.layer_decay ** depth})
    for group in groups:
        for parameter in group["params"]:
            parameter.requires_grad_(True)
    return groups


def warmup_cosine(total_steps: int, warmup_fraction: float) -> Callable[[int], float]:
    warmup = max(1, int(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


@dataclass
class FinetuneData:
    root: Path
    train_paths: list[str]
    train_labels: list[int]
    val_paths: list[str]
    val_labels: list[int]
    num_classes: int


@dataclass
class FinetuneResult:
    model: Classifier  # the best epoch's, or the starting model if no epoch beat it
    history: TrainingHistory
    resumed_from_epoch: int | None  # the last completed epoch found in a checkpoint, if any
    epochs_run: int  # epochs trained by this call
    estimated_seconds: float | None = None  # forecast from the first batches of this call

    @property
    def improved(self) -> bool:
        """Whether some epoch beat the starting model on validation."""
        return self.history.best_epoch >= 0


def sha256_seed(*parts: object) -> int:
    return int(sha256_text(*parts)[:15], 16)


def _evaluate(model: Classifier, dataset: ImageFolderRows, config: FinetuneConfig,
              device: torch.device, rank: Rank) -> tuple[float, float]:
    """Validation loss and accuracy; under torch.distributed each process scores its share
    and the sums are combined, so every process takes the same early-stopping decision."""
    model.eval()
    precision = precision_on(device, config.precision)
    totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, count
    with torch.inference_mode():
        order = rank.of(list(range(len(dataset))), pad=False)
        for images, labels in iterate_batches(dataset, config.batch_size,
                                              workers=max(config.num_workers, 1), order=order,
                                              pin_memory=device.type == "cuda"):
            images = to_device(images, device, config.channels_last)
            labels = labels.to(device)
            with autocast(device.type, precision):
                logits = model(images).float()
            totals += torch.tensor([
                functional.cross_entropy(logits, labels, reduction="sum").item(),
                (logits.argmax(1) == labels).sum().item(), len(labels)], dtype=torch.float64)
    if rank.world_size > 1:
        distributed.all_reduce(totals)
    loss, correct, count = totals.tolist()
    return loss / max(count, 1), correct / max(count, 1)


def finetune(backbone: Backbone, head: nn.Module, data: FinetuneData, config: FinetuneConfig,
             augment: AugmentConfig | None, seed: int, checkpoint: Path, device: torch.device,
             on_epoch_end: Callable[[int, dict], None] | None = None) -> FinetuneResult:
    """Train ``epochs`` epochs with early stopping on ``device``; resume from ``checkpoint``
    if it exists.

    ``checkpoint`` must be unique to this run's inputs (the caller keys it by content), so a
    checkpoint found there always belongs to the same training run.
    """
    rank, device = Rank.current(), _process_device(device)
    precision = precision_on(device, config.precision)
    torch.manual_seed(seed + rank.index)  # each process its own augmentation draws
    model = Classifier(copy.deepcopy(backbone.model), copy.deepcopy(head)).to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    blocks = _matching_blocks(backbone, model.backbone)
    groups = parameter_groups(model, blocks, config)
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    batch_size = rank.batch_size(config.batch_size)
    steps_per_epoch = math.ceil(len(rank.of(list(range(len(data.train_paths))))) / batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(steps_per_epoch * config.epochs, config.warmup_fraction))
    weights = class_weights(torch.tensor(data.train_labels), data.num_classes).to(device)
    # Gradients are averaged across processes after each backward pass; BatchNorm buffers
    # are frozen and equal everywhere, so they need no broadcast.
    forward = (nn.parallel.DistributedDataParallel(model, forward_sync_buffers=False)
               if rank.world_size > 1 else model)
    # Without an augmentation policy, training images look as they do at evaluation.
    preprocessing = backbone.preprocessing
    training_view, decode_side = (
        (train_transform(preprocessing, augment), train_decode_side(preprocessing, augment))
        if augment is not None else (eval_transform(preprocessing),
                                     eval_decode_side(preprocessing)))
    val_set = ImageFolderRows.for_evaluation(data.root, data.val_paths, preprocessing,
                                             data.val_labels)

    if checkpoint.is_file():
        resumed = checkpoint_file.restore(checkpoint, model, optimizer, scheduler,
                                          config.patience, device)
        stopping, history = resumed.stopping, resumed.history
        validation_s, resumed_from = resumed.validation_seconds, resumed.epoch
        start_epoch = resumed_from + 1
    else:
        # The model fine-tuning starts from is the one to beat: an epoch becomes the best only
        # with a lower validation loss and no lower accuracy than the start.
        started = time.perf_counter()
        loss, accuracy = _evaluate(model, val_set, config, device, rank)
        validation_s, resumed_from, start_epoch = time.perf_counter() - started, None, 0
        history = TrainingHistory(start={"val_loss": loss, "val_accuracy": accuracy})
        stopping = EarlyStopping(config.patience, copy.deepcopy(model.state_dict()), loss,
                                 min_accuracy=accuracy)
    if stopping.should_stop:
        start_epoch = config.epochs  # early stopping had already ended this run

    epochs_run, forecast = 0, _Forecast(steps_per_epoch, config.epochs - start_epoch,
                                        validation_s, rank.index == 0)
    for epoch in range(start_epoch, config.epochs):
        # Each image's augmentation draws from its own seed for this epoch, so loader threads
        # can run ahead in any order and a run (and a resumed run) is still reproducible.
        train_set = ImageFolderRows(data.root, data.train_paths, training_view, decode_side,
                                    [sha256_seed(path, epoch, seed) for path in data.train_paths],
                                    data.train_labels)
        order = torch.randperm(len(data.train_paths),
                               generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        batches = iterate_batches(train_set, batch_size, config.num_workers, rank.of(order),
                                  pin_memory=device.type == "cuda")
        train_loss = _train_epoch(
            model, forward, tqdm(batches, desc=f"finetune epoch {epoch + 1}/{config.epochs}",
                                 unit="batch", total=steps_per_epoch, disable=rank.index > 0),
            optimizer, scheduler, weights, config, precision, device, forecast)
        val_loss, val_accuracy = _evaluate(model, val_set, config, device, rank)
        record = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                  "val_accuracy": val_accuracy}
        history.record(**record)
        stopping.update(epoch, val_loss, val_accuracy, model.state_dict)
        history.best_epoch = stopping.best_epoch
        epochs_run += 1
        if rank.index == 0:
            checkpoint_file.save(checkpoint, epoch, model, optimizer, scheduler, stopping,
                                 history, validation_s, device)
        if on_epoch_end is not None:
            on_epoch_end(epoch, record)
        if stopping.should_stop:
            break
    model.load_state_dict(stopping.best_state)
    model.to(memory_format=torch.contiguous_format)
    return FinetuneResult(model.eval().cpu(), history, resumed_from, epochs_run,
                          forecast.estimate)


def _train_epoch(model: Classifier, forward: nn.Module, batches, optimizer, scheduler,
                 weights: torch.Tensor, config: FinetuneConfig, precision: str,
                 device: torch.device, forecast: _Forecast) -> float:
    """One pass over the training batches; the mean training loss."""
    model.train()
    total, seen = 0.0, 0
    for images, labels in batches:
        images = to_device(images, device, config.channels_last)
        labels = labels.to(device)
        with GLOBAL_RNG, autocast(device.type, precision):  # dropout draws
            logits = forward(images).float()
        loss = functional.cross_entropy(logits, labels, weight=weights)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        total, seen = total + loss.item() * len(labels), seen + len(labels)
        forecast.batch_done()
    return total / max(seen, 1)


class _Forecast:
    """How long the epochs left will take, from the first batches: printed once, up front."""

    BATCHES = 3

    def __init__(self, steps_per_epoch: int, epochs: int, validation_s: float, speak: bool):
        self.steps, self.epochs, self.validation_s = steps_per_epoch, epochs, validation_s
        self.speak, self.done, self.estimate = speak, 0, None
        self.started = time.perf_counter()

    def batch_done(self) -> None:
        self.done += 1
        if self.done != min(self.BATCHES, self.steps * self.epochs):
            return
        per_batch = (time.perf_counter() - self.started) / self.done
        self.estimate = per_batch * self.steps * self.epochs + self.validation_s * self.epochs
        if self.speak:
            tqdm.write(f"finetune: about {self.estimate / 60:.1f} min for {self.epochs} "
                       f"epoch(s) of {self.steps} batches ({per_batch:.2f} s a batch over the "
                       f"first {self.done}, {self.validation_s:.1f} s a validation pass)")


def _process_device(device: torch.device) -> torch.device:
    """One GPU per process under NCCL (torchrun sets LOCAL_RANK); otherwise ``device``."""
    if (distributed.is_available() and distributed.is_initialized()
            and distributed.get_backend() == "nccl"):
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return device


def _matching_blocks(backbone: Backbone, copied: nn.Module) -> list[list[nn.Parameter]]:
    """The parameters of ``copied``, grouped as ``backbone.blocks`` groups the original's."""
    names = {id(p): n for n, p in backbone.model.named_parameters()}
    copied_params = dict(copied.named_parameters())
    return [[copied_params[names[id(p)]] for p in block.parameters()]
            for block in backbone.blocks]
