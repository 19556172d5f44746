"""One fine-tuning candidate: the backbone plus its trained head with the top blocks unfrozen,
trained epoch by epoch, fastai-style.

Learning rates shrink with depth; BatchNorm running statistics stay the pretrained ones (better
estimates than a few hundred images give) unless the candidate re-estimates them in its
unfrozen blocks (``finetune.batchnorm: train``); early stopping keeps the best epoch
(``training.early_stopping``), and a checkpoint after every epoch lets a killed run
resume exactly (``training.checkpoint``). Each candidate draws dropout from its own random
stream, so a candidate trained beside others ends exactly as it would alone.
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
from tlpipe.fsio import set_aside, sha256_text
from tlpipe.training import checkpoint as checkpoint_file
from tlpipe.training.distributed import Rank
from tlpipe.training.early_stopping import EarlyStopping, TrainingHistory, ValidationScores
from tlpipe.training.heads import class_weights
from tlpipe.training.model import BATCHNORM, Classifier
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


@dataclass(frozen=True)
class Candidate:
    """How much of the backbone trains, and how fast: one point of the search."""

    blocks: int  # top blocks unfrozen (the head always trains)
    lr: float  # the head's peak learning rate; each deeper block gets layer_decay times less
    # "frozen": the unfrozen blocks' BatchNorm layers keep their pretrained statistics;
    # "train": they normalise by each batch's and re-estimate their running statistics.
    batchnorm: str = "frozen"

    @property
    def name(self) -> str:
        return (f"{self.blocks} block{'s' if self.blocks != 1 else ''}, lr {self.lr:g}"
                + (", BN train" if self.batchnorm == "train" else ""))


@dataclass
class FinetuneData:
    root: Path
    train_paths: list[str]
    train_labels: list[int]
    val_paths: list[str]
    val_labels: list[int]
    num_classes: int


def parameter_groups(model: Classifier, blocks: list[list[nn.Parameter]], candidate: Candidate,
                     layer_decay: float) -> list[dict]:
    """Freeze everything, then unfreeze the head and the top blocks, lr shrinking with depth."""
    model.requires_grad_(False)
    groups = [{"name": "head", "params": list(model.head.parameters()), "lr": candidate.lr}]
    unfrozen = blocks[-candidate.blocks:]
    for depth, block in enumerate(reversed(unfrozen), start=1):
        groups.append({"name": f"block-{len(blocks) - depth}", "params": block,
                       "lr": candidate.lr * layer_decay ** depth})
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


def sha256_seed(*parts: object) -> int:
    return int(sha256_text(*parts)[:15], 16)


class TuningRun:
    """One candidate's model, optimizer and schedule (over all ``config.epochs``, so a
    candidate that goes on after the search ends as it would have alone), trained an epoch at
    a time and checkpointed after each."""

    def __init__(self, candidate: Candidate, backbone: Backbone, head: nn.Module,
                 data: FinetuneData, config: FinetuneConfig, augment: AugmentConfig | None,
                 seed: int, checkpoint: Path, device: torch.device,
                 selection_metric: str = "macro_f1"):
        self.candidate, self.data, self.config, self.seed = candidate, data, config, seed
        self.score_key = f"val_{selection_metric}"
        self.checkpoint, self.rank = checkpoint, Rank.current()
        self.device = _process_device(device)
        self.precision = precision_on(self.device, config.precision)
        torch.manual_seed(seed + self.rank.index)  # each process its own augmentation draws
        self._rng = _rng_state(self.device)
        model = Classifier(copy.deepcopy(backbone.model), copy.deepcopy(head)).to(self.device)
        if config.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        blocks = _matching(backbone, model.backbone)
        self.optimizer = torch.optim.AdamW(
            parameter_groups(model, [list(block.parameters()) for block in blocks], candidate,
                             config.layer_decay),
            weight_decay=config.weight_decay)
        # Classifier.train() keeps every BatchNorm layer in eval mode; these go to train mode.
        self.training_norms = ([module for block in blocks[-candidate.blocks:]
                                for module in block.modules() if isinstance(module, BATCHNORM)]
                               if candidate.batchnorm == "train" else [])
        self.batch_size = self.rank.batch_size(config.batch_size)
        train_count = len(self.rank.of(list(range(len(data.train_paths)))))
        self.steps_per_epoch = math.ceil(train_count / self.batch_size)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, warmup_cosine(
            self.steps_per_epoch * config.epochs, config.warmup_fraction))
        self.weights = class_weights(torch.tensor(data.train_labels),
                                     data.num_classes).to(self.device)
        # Gradients are averaged across processes after each backward pass. Frozen BatchNorm
        # buffers are equal everywhere; trained ones are the first process's, broadcast before
        # each forward pass (so more processes are not bit-identical to one).
        self.forward = (nn.parallel.DistributedDataParallel(
            model, forward_sync_buffers=bool(self.training_norms))
                        if self.rank.world_size > 1 else model)
        # Without an augmentation policy, training images look as they do at evaluation.
        preprocessing = backbone.preprocessing
        self.training_view, self.decode_side = (
            (train_transform(preprocessing, augment), train_decode_side(preprocessing, augment))
            if augment is not None else (eval_transform(preprocessing),
                                         eval_decode_side(preprocessing)))
        self.val_set = ImageFolderRows.for_evaluation(data.root, data.val_paths, preprocessing,
                                                      data.val_labels)
        self.stopping: EarlyStopping | None = None
        self.history = TrainingHistory()
        self.validation_s, self.resumed_from, self.next_epoch = 0.0, None, 0
        self.seconds: list[float] = []  # each epoch trained by this process, validation included

    def start(self, shared_start: tuple[dict, float] | None = None) -> tuple[dict, float]:
        """Resume from the checkpoint, or score the starting model (the head on the frozen
        backbone, the same for every candidate: ``shared_start`` passes it on). Returns the
        start's validation figures and the seconds a validation pass took."""
        if self.checkpoint.is_file():
            try:
                resumed = checkpoint_file.restore(self.checkpoint, self.model, self.optimizer,
                                                  self.scheduler, self.config.patience,
                                                  self.device)
            except checkpoint_file.CorruptCheckpoint as error:
                kept = set_aside(self.checkpoint)
                tqdm.write(f"finetune: WARNING: {error}; set aside as {kept.name}, "
                           f"{self.candidate.name} starts over")
                return self.start(shared_start)
            self._rng = _rng_state(self.device)
            self.stopping, self.history = resumed.stopping, resumed.history
            self.validation_s, self.resumed_from = resumed.validation_seconds, resumed.epoch
            self.next_epoch = resumed.epoch + 1
            return self.history.start, self.validation_s
        if shared_start is None:
            started = time.perf_counter()
            figures = _evaluate(self.model, self.val_set, self.config, self.device, self.rank,
                                self.data.num_classes)
            shared_start = (figures, time.perf_counter() - started)
        figures, self.validation_s = shared_start
        # The model fine-tuning starts from is the one to beat: an epoch becomes the best only
        # with a lower validation loss and no lower selection metric than the start.
        self.history = TrainingHistory(start=dict(figures))
        self.stopping = EarlyStopping(self.config.patience, copy.deepcopy(self.model.state_dict()),
                                      figures["val_loss"], min_score=figures[self.score_key])
        return shared_start

    @property
    def finished(self) -> bool:
        return self.stopping.should_stop or self.next_epoch >= self.config.epochs

    @property
    def best_loss(self) -> float:
        return self.stopping.best_loss

    def train_epoch(self, forecast: Forecast | None = None) -> dict:
        """Train the next epoch, score it on validation, checkpoint; the epoch's record."""
        epoch, config, data = self.next_epoch, self.config, self.data
        started = time.perf_counter()
        with GLOBAL_RNG:
            _set_rng_state(self._rng, self.device)
        # Each image's augmentation draws from its own seed for this epoch, so loader threads
        # can run ahead in any order and a run (and a resumed run) is still reproducible.
        train_set = ImageFolderRows(data.root, data.train_paths, self.training_view,
                                    self.decode_side,
                                    [sha256_seed(path, epoch, self.seed)
                                     for path in data.train_paths], data.train_labels)
        order = torch.randperm(len(data.train_paths),
                               generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
        batches = iterate_batches(train_set, self.batch_size, config.num_workers,
                                  self.rank.of(order), pin_memory=self.device.type == "cuda")
        progress = tqdm(batches, desc=f"finetune {self.candidate.name}: epoch {epoch + 1}/"
                        f"{config.epochs}", unit="batch", total=self.steps_per_epoch,
                        disable=self.rank.index > 0)
        train_loss = _train_epoch(self, progress, forecast)
        figures = _evaluate(self.model, self.val_set, config, self.device, self.rank,
                            data.num_classes)
        record = {"epoch": epoch, "train_loss": train_loss, **figures}
        self.history.record(**record)
        self.stopping.update(epoch, figures["val_loss"], figures[self.score_key],
                             self.model.state_dict)
        self.history.best_epoch = self.stopping.best_epoch
        with GLOBAL_RNG:
            self._rng = _rng_state(self.device)
        if self.rank.index == 0:
            checkpoint_file.save(self.checkpoint, epoch, self.model, self.optimizer,
                                 self.scheduler, self.stopping, self.history, self.validation_s,
                                 self.device)
        self.next_epoch = epoch + 1
        self.seconds.append(time.perf_counter() - started)
        return record

    def best_model(self) -> Classifier:
        """The best epoch's weights, or the starting model's if no epoch beat it."""
        self.model.load_state_dict(self.stopping.best_state)
        self.model.to(memory_format=torch.contiguous_format)
        return self.model.eval().cpu()


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The streams dropout draws from: the CPU's, and the GPU's on a GPU."""
    return (torch.get_rng_state(),
            torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def _set_rng_state(state: tuple[torch.Tensor, torch.Tensor | None],
                   device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _evaluate(model: Classifier, dataset: ImageFolderRows, config: FinetuneConfig,
              device: torch.device, rank: Rank, num_classes: int) -> dict[str, float]:
    """Validation figures (``ValidationScores``); under torch.distributed each process scores
    its share and the sums are combined, so every process takes the same decisions."""
    model.eval()
    precision = precision_on(device, config.precision)
    scores = ValidationScores(num_classes)
    with torch.inference_mode():
        order = rank.of(list(range(len(dataset))), pad=False)
        for images, labels in iterate_batches(dataset, config.batch_size,
                                              workers=max(config.num_workers, 1), order=order,
                                              pin_memory=device.type == "cuda"):
            images = to_device(images, device, config.channels_last)
            labels = labels.to(device)
            with autocast(device.type, precision):
                logits = model(images).float()
            scores.add(functional.cross_entropy(logits, labels, reduction="none"),
                       logits.argmax(1), labels)
    if rank.world_size > 1:
        totals = scores.totals.to(device)  # NCCL reduces only tensors on the GPU
        distributed.all_reduce(totals)
        scores.totals = totals.cpu()
    return scores.figures()


def _train_epoch(run: TuningRun, batches, forecast: Forecast | None) -> float:
    """One pass over the training batches; the mean training loss."""
    run.model.train()
    for norm in run.training_norms:
        norm.train()
    total, seen = 0.0, 0
    for images, labels in batches:
        images = to_device(images, run.device, run.config.channels_last)
        labels = labels.to(run.device)
        with GLOBAL_RNG, autocast(run.device.type, run.precision):  # dropout draws
            logits = run.forward(images).float()
        loss = functional.cross_entropy(logits, labels, weight=run.weights)
        run.optimizer.zero_grad()
        loss.backward()
        run.optimizer.step()
        run.scheduler.step()
        total, seen = total + loss.item() * len(labels), seen + len(labels)
        if forecast is not None:
            forecast.batch_done()
    return total / max(seen, 1)


class Forecast:
    """How long the work ahead will take, from the first batches: printed once, up front."""

    BATCHES = 3

    def __init__(self, batches_ahead: int, validation_s: float, validations: int,
                 speak: bool):
        self.batches_ahead, self.validation_s = batches_ahead, validation_s
        self.validations, self.speak, self.done, self.estimate = validations, speak, 0, None
        self.started = time.perf_counter()

    def batch_done(self) -> None:
        self.done += 1
        if self.done != min(self.BATCHES, self.batches_ahead):
            return
        per_batch = (time.perf_counter() - self.started) / self.done
        self.estimate = per_batch * self.batches_ahead + self.validation_s * self.validations
        if self.speak:
            tqdm.write(f"finetune: about {self.estimate / 60:.1f} min for {self.batches_ahead} "
                       f"batches and {self.validations} validation pass(es) ({per_batch:.2f} s "
                       f"a batch over the first {self.done}, {self.validation_s:.1f} s a "
                       "validation pass)")


def _process_device(device: torch.device) -> torch.device:
    """One GPU per process under NCCL (torchrun sets LOCAL_RANK); otherwise ``device``."""
    if (distributed.is_available() and distributed.is_initialized()
            and distributed.get_backend() == "nccl"):
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return device


def _matching(backbone: Backbone, copied: nn.Module) -> list[nn.ModuleList]:
    """Each of ``backbone.blocks`` as the same modules of ``copied``, a copy of
    ``backbone.model``: the block itself, or its parts where the block only groups them
    (EfficientNet's stem and head)."""
    names = {id(module): name for name, module in backbone.model.named_modules()}

    def parts(block: nn.Module) -> list[nn.Module]:
        return [block] if id(block) in names else list(block.children())

    return [nn.ModuleList(copied.get_submodule(names[id(part)]) for part in parts(block))
            for block in backbone.blocks]
