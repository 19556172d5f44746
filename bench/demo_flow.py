"""The demo flow end to end with each feature engine, and each stage's time.

For each engine, a new project on the demo images (`tlpipe init`, then `tlpipe run`) with an
empty feature store. Exported graphs live in the machine's ``features.engine_dir`` and are
reused, as a user's second project reuses them; a cold one adds about 7 s (features stage)
and 7 s more for a fine-tuned model (evaluate stage). Stage times come from the run's MLflow
stage runs. The last column compares the fine-tune stage with the feature stage.

    .venv/bin/python bench/demo_flow.py [--engines onnxruntime,torch]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import DEMO, REPO

STAGES = ("validate", "features", "head", "finetune", "evaluate", "register")


def tlpipe(*arguments: str, cwd: Path) -> None:
    command = [str(Path(sys.executable).with_name("tlpipe")), *arguments]
    # mlflow.set_tracking_uri (stage_seconds) exports MLFLOW_TRACKING_URI, which would send
    # the next project's runs to this one's store.
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    subprocess.run(command, cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   env={**env, "PYTHONWARNINGS": "ignore"})


def stage_seconds(project: Path) -> dict[str, float]:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow' / 'mlflow.db'}")
    runs = mlflow.search_runs(search_all_experiments=True)
    names = runs["tags.mlflow.runName"].fillna("")
    seconds = {}
    for stage in STAGES:
        rows = runs[names == stage]
        if len(rows):
            row = rows.iloc[0]
            seconds[stage] = (row["end_time"] - row["start_time"]).total_seconds()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default="onnxruntime,torch")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for engine in args.engines.split(","):
            project = Path(folder) / engine
            tlpipe("init", str(project), "--data", str(DEMO), cwd=REPO)
            settings = ["--set", f"features.engine={engine}",
                        "--set", f"features.store={Path(folder) / engine / 'features'}"]
            started = time.perf_counter()
            tlpipe("run", *settings, cwd=project)
            rows.append((engine, time.perf_counter() - started, stage_seconds(project)))
    print(f"\n{'engine':12} {'flow s':>7} " + " ".join(f"{s:>9}" for s in STAGES)
          + f" {'finetune/features':>18}")
    for engine, total, seconds in rows:
        ratio = seconds.get("finetune", 0) / max(seconds.get("features", 0), 1e-9)
        print(f"{engine:12} {total:7.1f} " + " ".join(
            f"{seconds.get(stage, float('nan')):9.1f}" for stage in STAGES)
            + f" {ratio:18.2f}")


if __name__ == "__main__":
    main()
