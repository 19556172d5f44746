"""Fine-tuning across processes with torchrun: the launcher, and what each process runs.

The step that asks for more than one process (finetune.processes) starts
``torchrun --standalone --nproc-per-node N -m tlpipe.distributed``; every process joins the
group (gloo on CPUs, NCCL on GPUs), runs the same fine-tuning step on its share of each batch,
and the first one writes the model, the history and the step's result, as one process would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import distributed

from tlpipe.config import Params
from tlpipe.fsio import write_json


class DistributedError(RuntimeError):
    pass


def backend_for(choice: str) -> str:
    if choice != "auto":
        return choice
    return "nccl" if torch.cuda.is_available() else "gloo"


def launch_finetune(params: Params, project_dir: Path,
                    on_epoch_end: Callable[[int, dict], None] | None = None) -> dict:
    """Run the fine-tuning step under torchrun and return its result; the per-epoch records
    are replayed through ``on_epoch_end`` afterwards (they happened in other processes)."""
    processes = params.finetune.processes
    if backend_for(params.finetune.backend) == "nccl" and torch.cuda.device_count() < processes:
        raise DistributedError(
            f"finetune.processes={processes} with the nccl backend needs {processes} GPUs; "
            f"this machine has {torch.cuda.device_count()}. Use finetune.backend: gloo")
    with tempfile.TemporaryDirectory(prefix="tlpipe-torchrun-") as folder:
        settings, result = Path(folder) / "params.json", Path(folder) / "result.json"
        settings.write_text(params.model_dump_json())
        # Split this machine's cores between the processes instead of oversubscribing them.
        threads = max(1, (os.cpu_count() or 1) // processes)
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc-per-node", str(processes), "-m", "tlpipe.distributed",
                   str(settings), str(Path(project_dir).resolve()), str(result)]
        completed = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        if completed.returncode != 0 or not result.is_file():
            raise DistributedError(f"torchrun fine-tuning with {processes} processes failed "
                                   f"(exit {completed.returncode}); its output is above")
        outcome = json.loads(result.read_text())
    if on_epoch_end is not None:
        for record in outcome["history"]:
            on_epoch_end(record["epoch"], record)
    return outcome


def main(settings: str, project_dir: str, result: str) -> None:
    from tlpipe.steps import finetune_step

    params = Params.model_validate_json(Path(settings).read_text())
    distributed.init_process_group(backend_for(params.finetune.backend))
    try:
        outcome = finetune_step(params, Path(project_dir))
        if distributed.get_rank() == 0:
            write_json(Path(result), outcome)
    finally:
        distributed.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
