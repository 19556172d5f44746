"""Fine-tuning in one process against torchrun with N processes, on the demo data.

Both start from the same trained head and run the same epochs with the same global batch;
the N processes each take 1/N of every batch and average their gradients. Printed: wall time
(torchrun start-up included), the ratio to one process, and the quality each reaches.

    .venv/bin/python bench/finetune_processes.py [--processes 2] [--epochs 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import DEMO

from tlpipe.params_file import parse_params
from tlpipe.stages import evaluate, features, finetune, head, manifest, validate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    project = Path(tempfile.mkdtemp(prefix="tlpipe-bench-ddp-"))
    base = {"data": {"root": str(DEMO)}, "validation": {"quarantine": ["format"]},
            "finetune": {"epochs": args.epochs}}
    params = parse_params(base)
    for stage in (manifest, validate, features, head):
        stage.compute(params, project)

    rows = []
    for processes in (1, args.processes):
        settings = parse_params({**base, "finetune": {**base["finetune"],
                                                      "processes": processes}})
        start = time.perf_counter()
        result = finetune.compute(settings, project)
        seconds = time.perf_counter() - start
        metrics = evaluate.compute(settings, project)
        best = result["history"][-1]
        rows.append((processes, seconds, best["val_loss"], best["val_accuracy"],
                     metrics["accuracy"], metrics["macro_f1"]))

    print(f"\nfine-tuning, {args.epochs} epochs, demo data ({DEMO})")
    print(f"{'processes':>9} {'seconds':>8} {'x 1 proc':>8} {'val loss':>9} {'val acc':>8} "
          f"{'test acc':>9} {'macro-F1':>9}")
    for processes, seconds, val_loss, val_acc, accuracy, macro_f1 in rows:
        print(f"{processes:>9} {seconds:>8.1f} {seconds / rows[0][1]:>8.2f} {val_loss:>9.4f} "
              f"{val_acc:>8.4f} {accuracy:>9.4f} {macro_f1:>9.4f}")


if __name__ == "__main__":
    main()
