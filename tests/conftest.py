"""Shared fixtures: the real demo data, small slices of it, and a throwaway project."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tlpipe.ops.runtime import apply_runtime_defaults

REPO = Path(__file__).resolve().parent.parent
DEMO = (REPO / ".." / "shared" / "datasets" / "hymenoptera_data").resolve()

# Before Prefect or MLflow is imported anywhere in the test session.
# One folder per pytest-xdist worker: each worker is a test session of its own.
_SESSION_STATE = Path(os.environ.get("TLPIPE_TEST_STATE", "/tmp/tlpipe-test-state")
                      + os.environ.get("PYTEST_XDIST_WORKER", ""))
shutil.rmtree(_SESSION_STATE, ignore_errors=True)
_SESSION_STATE.mkdir(parents=True)
apply_runtime_defaults(_SESSION_STATE)


def _demo_root() -> Path:
    if not (DEMO / "train").is_dir():
        pytest.fail(f"demo data not found at {DEMO}: the tests need ../shared/datasets/"
                    "hymenoptera_data beside the project")
    return DEMO


@pytest.fixture(scope="session")
def demo_root() -> Path:
    return _demo_root()


def copy_slice(destination: Path, per_class: dict[str, int]) -> Path:
    """Copy the first N images (by name) of each split/class, e.g. {"train": 8, "val": 4}."""
    root = _demo_root()
    for split, count in per_class.items():
        for class_dir in sorted((root / split).iterdir()):
            target = destination / split / class_dir.name
            target.mkdir(parents=True, exist_ok=True)
            for image in sorted(class_dir.glob("*.jpg"))[:count]:
                shutil.copy2(image, target / image.name)
    return destination


@pytest.fixture(scope="session")
def small_data(tmp_path_factory) -> Path:
    """12 train and 6 val images per class, plus the demo set's GIF placeholder."""
    data = copy_slice(tmp_path_factory.mktemp("data") / "slice", {"train": 12, "val": 6})
    shutil.copy2(_demo_root() / "train" / "ants" / "imageNotFound.gif",
                 data / "train" / "ants" / "imageNotFound.gif")
    return data


SMALL_PARAMS = {
    "data": {"expected_classes": ["ants", "bees"]},
    "split": {"val_fraction": 0.3},
    "validation": {"quarantine": ["format"]},
    # One view, no pixel option: quick runs (tests/test_pixels.py and test_recipe.py run them).
    "features": {"views": 1, "batch_size": 16, "try_pixels": False},
    # Two rungs of the ladder keep runs quick and the head fine-tunable (tests/test_recipe.py
    # runs the whole ladder).
    "head": {"epochs": 40, "patience": 10, "candidates": ["logistic", "linear"]},
    "finetune": {"epochs": 1, "batch_size": 8, "unfreeze_blocks": 1},
    "evaluation": {"batch_size": 16},
    "registry": {"model_name": "test-ants-bees"},
    "promotion": {"after_training": False},  # tests/test_promotion.py covers the gate
}


def make_project(directory: Path, data: Path, extra: dict | None = None) -> Path:
    """A git repository holding a params.yaml that points at ``data``."""
    from tlpipe.params_file import deep_merge

    directory.mkdir(parents=True, exist_ok=True)
    params = deep_merge(SMALL_PARAMS, {"data": {"root": str(data)}})
    (directory / "params.yaml").write_text(yaml.safe_dump(deep_merge(params, extra or {})))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], cwd=directory, check=True)
    subprocess.run([*git, "add", "params.yaml"], cwd=directory, check=True)
    subprocess.run([*git, "commit", "-qm", "params"], cwd=directory, check=True)
    return directory


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cli_env(prefect_home: Path | None = None) -> dict[str, str]:
    """The environment for a tlpipe command in a subprocess: without the MLflow store that
    mlflow.set_tracking_uri() left in os.environ, so the project's own params decide."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "PREFECT_API_URL")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    if prefect_home is not None:  # each CLI process then runs its own Prefect server
        env["PREFECT_HOME"] = str(prefect_home)
    return env


def harness_env() -> dict[str, str]:
    """A CLI subprocess that talks to this session's Prefect test server (``prefect_harness``)
    instead of starting a temporary server of its own: 5 to 12 s of CPU per command.
    tests/test_processes.py and tests/test_kill_resume.py keep the temporary server."""
    from prefect.settings import PREFECT_API_URL

    return {**cli_env(), "PREFECT_API_URL": PREFECT_API_URL.value()}


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def onnx_probabilities(onnx_file: Path, images: list):
    """An exported model's probabilities for decoded images (uint8 HxW or HxWx3 arrays), one
    image per run as a user with images of mixed sizes would call it."""
    import numpy as np
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    return np.concatenate([
        session.run(None, {"image": (image[:, :, None] if image.ndim == 2 else image)[None]})[0]
        for image in map(np.asarray, images)])
