"""Running one function in several processes under torchrun, and each process's rank.

``launch`` starts ``torchrun --standalone --nproc-per-node N -m tlpipe.training.distributed
TARGET ...``; every process joins the group (gloo on CPUs, NCCL on GPUs) and calls TARGET
(``module:function``, imported by name, so this module depends on nothing it launches) with
the same JSON payload. The first process's return value comes back to the caller.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import distributed

from tlpipe.errors import TlpipeError
from tlpipe.fsio import write_json


class DistributedError(TlpipeError):
    pass


def backend_for(choice: str, device: torch.device) -> str:
    """``auto``: NCCL when the processes train on GPUs, gloo on CPUs (also on a GPU machine
    told to use its CPU)."""
    if choice != "auto":
        return choice
    return "nccl" if device.type == "cuda" else "gloo"


@dataclass(frozen=True)
class Rank:
    """This process's part of the work under torch.distributed (rank 0 of 1 without it)."""

    index: int = 0
    world_size: int = 1

    @classmethod
    def current(cls) -> Rank:
        if distributed.is_available() and distributed.is_initialized():
            return cls(distributed.get_rank(), distributed.get_world_size())
        return cls()

    def of(self, order: list[int], pad: bool = True) -> list[int]:
        """Every ``world_size``-th item from ``index``. When ``world_size`` divides B, batch b
        of size B/world_size on each process holds exactly the items of batch b of size B in
        one process (otherwise nearly). With ``pad``, the order is first padded to a multiple
        of ``world_size``, so every process takes the same number of steps
        (DistributedDataParallel needs that)."""
        if pad and len(order) % self.world_size:
            order = order + order[:self.world_size - len(order) % self.world_size]
        return order[self.index::self.world_size]

    def batch_size(self, batch_size: int) -> int:
        return max(1, math.ceil(batch_size / self.world_size))


def launch(target: str, payload: dict, processes: int, backend: str, device: torch.device
           ) -> dict:
    """Call ``target`` (``module:function`` taking the payload) in ``processes`` processes
    under torchrun, each on ``device`` (one GPU each under NCCL); return what the first
    process returned."""
    backend = backend_for(backend, device)
    if backend == "nccl" and torch.cuda.device_count() < processes:
        raise DistributedError(
            f"{processes} processes with the nccl backend need {processes} GPUs; this "
            f"machine has {torch.cuda.device_count()}. Use the gloo backend")
    with tempfile.TemporaryDirectory(prefix="tlpipe-torchrun-") as folder:
        arguments, result = Path(folder) / "payload.json", Path(folder) / "result.json"
        arguments.write_text(json.dumps(payload))
        # Split this machine's cores between the processes instead of oversubscribing them.
        threads = max(1, (os.cpu_count() or 1) // processes)
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc-per-node", str(processes), "-m", "tlpipe.training.distributed",
                   target, backend, str(arguments), str(result)]
        completed = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        if completed.returncode != 0 or not result.is_file():
            raise DistributedError(f"torchrun with {processes} processes failed "
                                   f"(exit {completed.returncode}); its output is above")
        return json.loads(result.read_text())


def _main(target: str, backend: str, arguments: str, result: str) -> None:
    module, _, function = target.partition(":")
    call = getattr(importlib.import_module(module), function)
    distributed.init_process_group(backend)
    try:
        outcome = call(json.loads(Path(arguments).read_text()))
        if distributed.get_rank() == 0:
            write_json(Path(result), outcome)
    finally:
        distributed.destroy_process_group()


if __name__ == "__main__":
    _main(*sys.argv[1:])
