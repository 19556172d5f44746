"""How long `tlpipe models` takes, against the floor of any command that reads the registry:
a bare `python -c "import mlflow"`. Both run as fresh processes, alternately, several times,
on a real MLflow store with one registered version; the ratio of the medians is printed.

    .venv/bin/python bench/cli_startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL = "bench-cli"


def make_store(project: Path) -> None:
    from mlflow.tracking import MlflowClient

    (project / "mlflow").mkdir()
    client = MlflowClient(f"sqlite:///{project}/mlflow/mlflow.db")
    experiment = client.create_experiment("tlpipe", artifact_location=(
        project / "mlflow" / "artifacts").as_uri())
    run = client.create_run(experiment)
    client.set_terminated(run.info.run_id)
    client.create_registered_model(MODEL)
    version = client.create_model_version(MODEL, f"{run.info.artifact_uri}/model",
                                          run.info.run_id, tags={"test_accuracy": "0.9"})
    client.set_registered_model_alias(MODEL, "champion", version.version)
    (project / "params.yaml").write_text(f"registry:\n  model_name: {MODEL}\n")


def seconds(command: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    repeats = parser.parse_args().repeats
    tlpipe = str(Path(sys.executable).with_name("tlpipe"))
    commands = {
        "python -c 'import mlflow'": [sys.executable, "-c", "import mlflow"],
        "tlpipe models": [tlpipe, "models"],
        "tlpipe --help": [tlpipe, "--help"],
        "python -c 'import torch, timm' (what models used to import)":
            [sys.executable, "-c", "import torch, timm"],
    }
    with tempfile.TemporaryDirectory() as folder:
        project = Path(folder)
        make_store(project)
        for command in commands.values():  # warm the file cache once
            seconds(command, project)
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(repeats):
            for name, command in commands.items():
                times[name].append(seconds(command, project))
    baseline = statistics.median(times["python -c 'import mlflow'"])
    print(f"median of {repeats} fresh processes each, on a store with one version")
    print(f"{'command':<62} {'median s':>9} {'x import mlflow':>16}")
    for name, measured in times.items():
        median = statistics.median(measured)
        print(f"{name:<62} {median:>9.2f} {median / baseline:>16.2f}")


if __name__ == "__main__":
    main()
