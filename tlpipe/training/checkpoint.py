"""Fine-tuning checkpoints: after every epoch, everything a killed run needs to resume exactly
(the same trainable parameters, optimizer moments, schedule position, early-stopping state and
RNG streams).

A checkpoint file starts with a line holding the SHA-256 of the rest: a file changed on disk
is refused (``CorruptCheckpoint``) before anything in it is loaded, and the caller sets it
aside and starts that training over.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tlpipe.errors import TlpipeError
from tlpipe.fsio import write_atomic
from tlpipe.training.early_stopping import EarlyStopping, TrainingHistory

# What a checkpoint holds changes with this number; it is part of the checkpoint's key, so a
# checkpoint written by another version of this module is never found, let alone misread.
CHECKPOINT_FORMAT = 7
_HEADER = b"tlpipe-checkpoint sha256="


class CorruptCheckpoint(TlpipeError):
    """A checkpoint whose content does not match the digest written with it."""


@dataclass
class Resumed:
    epoch: int                 # the last completed epoch
    stopping: EarlyStopping
    history: TrainingHistory
    validation_seconds: float  # one validation pass, as first measured (for the forecast)


def trainable_names(model: nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad]


def save(path: Path, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer,
         scheduler: torch.optim.lr_scheduler.LRScheduler, stopping: EarlyStopping,
         history: TrainingHistory, validation_seconds: float, device: torch.device) -> None:
    state = {
        "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(), "best_model": stopping.best_state,
        "best_loss": stopping.best_loss, "min_score": stopping.min_score,
        "stale": stopping.stale, "history": history.epochs,
        "best_epoch": stopping.best_epoch, "trainable": trainable_names(model),
        "rng": torch.get_rng_state(), "start": history.start,
        # Dropout on a GPU draws from the GPU's generator.
        **({"cuda_rng": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {}),
        "validation_seconds": validation_seconds,
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    header = _HEADER + hashlib.sha256(payload).hexdigest().encode() + b"\n"
    write_atomic(path, lambda temporary: temporary.write_bytes(header + payload))


def _verified_state(path: Path) -> dict:
    header, _, payload = path.read_bytes().partition(b"\n")
    if (not header.startswith(_HEADER)
            or header.removeprefix(_HEADER) != hashlib.sha256(payload).hexdigest().encode()):
        raise CorruptCheckpoint(f"{path}: its content does not match the digest written with it")
    return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)



def restore(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
            scheduler: torch.optim.lr_scheduler.LRScheduler, patience: int,
            device: torch.device) -> Resumed:
    """Load ``path`` into the model, optimizer and scheduler (the same state in every process)
    and the RNG (the first process's stream: exact for one process); ``CorruptCheckpoint``,
    with nothing loaded, if the file does not match its digest."""
    state = _verified_state(path)
    if state["trainable"] != trainable_names(model):
        raise RuntimeError(f"{path}: trainable parameters differ from this run's; "
                           "delete the checkpoint to start over")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    if device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_rng"], device)
    start = state["start"]
    stopping = EarlyStopping(patience, state["best_model"], state["best_loss"],
                             min_score=state["min_score"], stale=state["stale"],
                             best_epoch=state["best_epoch"])
    return Resumed(state["epoch"], stopping,
                   TrainingHistory(state["history"], state["best_epoch"], start),
                   state["validation_seconds"])
