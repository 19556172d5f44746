"""DVC for real: a temporary git + DVC repository, a directory remote, `dvc repro`."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, SMALL_PARAMS, copy_slice
from tlpipe.params_file import deep_merge

BIN = str(Path(sys.executable).parent)
# Children get the user's environment: this venv first, no MLflow URI exported by other tests.
ENV = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
       "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
       "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
       "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
CODE = ["tlpipe", "tasks", "flows", "dvc.yaml", ".dvcignore", ".gitignore"]


def sh(*command: str, cwd: Path) -> str:
    result = subprocess.run(command, cwd=cwd, env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def dvc(*args: str, cwd: Path) -> str:
    return sh(sys.executable, "-m", "dvc", *args, cwd=cwd)


def stages_run(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines()
            if line.startswith("Running stage")]


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    """Repository A (origin, data pushed to a directory remote) and B, a fresh clone of it."""
    base = tmp_path_factory.mktemp("dvc")
    origin, remote, clone = base / "origin", base / "remote", base / "clone"
    origin.mkdir()
    for name in CODE:
        source = REPO / name
        copy = shutil.copytree if source.is_dir() else shutil.copy2
        copy(source, origin / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                       if source.is_dir() else {}))
    copy_slice(origin / "data" / "raw" / "hymenoptera_data", {"train": 10, "val": 5})
    # DVC needs every key a stage names written out: start from the shipped params.yaml.
    shipped = yaml.safe_load((REPO / "params.yaml").read_text())
    params = deep_merge(deep_merge(shipped, SMALL_PARAMS), {"registry": {"model_name": "dvc-test"}})
    (origin / "params.yaml").write_text(yaml.safe_dump(params))
    sh("git", "init", "-q", cwd=origin)
    dvc("init", "-q", cwd=origin)
    dvc("config", "core.analytics", "false", cwd=origin)
    dvc("add", "-q", "data/raw/hymenoptera_data", cwd=origin)
    dvc("remote", "add", "-d", "store", str(remote), cwd=origin)
    sh("git", "add", "-A", cwd=origin)
    sh("git", "commit", "-qm", "project with data", cwd=origin)
    dvc("push", "-q", cwd=origin)
    sh("git", "clone", "-q", str(origin), str(clone), cwd=base)
    return origin, clone


@pytest.fixture(scope="module")
def first_repro(repos):
    _, clone = repos
    pulled = dvc("pull", "data/raw/hymenoptera_data.dvc", cwd=clone)
    assert (clone / "data" / "raw" / "hymenoptera_data" / "train").is_dir(), pulled
    return dvc("repro", cwd=clone)


def test_fresh_clone_pull_and_repro_builds_the_model(repos, first_repro):
    _, clone = repos
    assert stages_run(first_repro) == ["manifest", "validate", "augment", "features", "audit",
                                       "head", "finetune", "evaluate"]
    assert (clone / "outputs" / "model" / "model.safetensors").is_file()
    metrics = json.loads((clone / "outputs" / "evaluate" / "metrics.json").read_text())
    assert metrics["n_test"] == 10 and 0 <= metrics["accuracy"] <= 1


def test_repro_is_tracked_as_one_parent_run_with_a_child_per_stage(repos, first_repro):
    import mlflow
    from mlflow.tracking import MlflowClient

    _, clone = repos
    mlflow.set_tracking_uri(f"sqlite:///{clone / 'mlflow' / 'mlflow.db'}")
    client = MlflowClient()
    experiment = client.get_experiment_by_name("tlpipe").experiment_id
    parents = client.search_runs([experiment], "tags.`tlpipe.kind` = 'pipeline'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    tags = parents[0].data.tags
    assert tags["trigger"] == "dvc" and len(tags["git_commit"]) == 40
    assert tags["data_dvc_md5"].endswith(".dir")
    children = client.search_runs([experiment],
                                  f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'")
    assert len(children) == 8 and "test_accuracy" in parents[0].data.metrics


def test_second_repro_does_nothing(repos, first_repro):
    _, clone = repos
    output = dvc("repro", cwd=clone)
    assert stages_run(output) == [] and "up to date" in output


def edit_function(path: Path, signature: str) -> str:
    """Add a statement to the function that starts with ``signature``; return the original."""
    original = path.read_text()
    line = next(line for line in original.splitlines() if line.startswith(signature))
    path.write_text(original.replace(line + "\n", line + "\n    edited = True  # noqa\n", 1))
    return original


@pytest.mark.parametrize(("module", "signature", "expected"), [
    # Fine-tuning validates and the preview's first column shows the evaluation preprocessing.
    ("tlpipe/vectors/preprocess.py", "def eval_transform", {"augment", "features", "finetune",
                                                    "evaluate"}),
    ("tlpipe/stages/head.py", "def compute", {"head"}),
])
def test_editing_a_function_marks_only_the_stages_that_run_it(repos, first_repro, module,
                                                              signature, expected):
    _, clone = repos
    original = edit_function(clone / module, signature)
    try:
        changed = json.loads(dvc("status", "--json", cwd=clone))
    finally:
        (clone / module).write_text(original)
    assert set(changed) == expected
    assert json.loads(dvc("status", "--json", cwd=clone)) == {}


def test_same_code_data_and_params_give_identical_results(repos, first_repro):
    origin, clone = repos
    dvc("repro", cwd=origin)
    for path in ("outputs/head/head.safetensors", "outputs/evaluate/metrics.json",
                 "outputs/model/model.safetensors"):
        assert (origin / path).read_bytes() == (clone / path).read_bytes(), path


def test_a_head_param_change_reruns_only_head_finetune_and_evaluate(repos, first_repro):
    _, clone = repos
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["head"]["lr"] = 0.003
    (clone / "params.yaml").write_text(yaml.safe_dump(params))
    assert stages_run(dvc("repro", cwd=clone)) == ["head", "finetune", "evaluate"]
    assert "head.lr" in dvc("params", "diff", cwd=clone)
    sh("git", "checkout", "params.yaml", cwd=clone)


def test_an_experiment_is_listed_by_dvc_and_tracked_in_mlflow(repos, first_repro):
    import mlflow
    from mlflow.tracking import MlflowClient

    _, clone = repos
    output = dvc("exp", "run", "-S", "head.label_smoothing=0.0", "-n", "no-smoothing",
                 cwd=clone)
    assert stages_run(output) == ["head", "finetune", "evaluate"]
    assert "no-smoothing" in dvc("exp", "show", "--csv", cwd=clone)
    mlflow.set_tracking_uri(f"sqlite:///{clone / 'mlflow' / 'mlflow.db'}")
    client = MlflowClient()
    experiment = client.get_experiment_by_name("tlpipe").experiment_id
    heads = client.search_runs([experiment], "tags.`tlpipe.stage` = 'head' "
                                             "and params.`head.label_smoothing` = '0.0'")
    assert len(heads) == 1
    sh("git", "checkout", "params.yaml", cwd=clone)


def test_reproduce_rebuilds_a_registered_model_and_reports_a_match(repos, first_repro):
    origin, _ = repos
    sh("git", "add", "-A", cwd=origin)
    sh("git", "commit", "-qm", "lock", cwd=origin)
    # The flow must fine-tune by itself (not reuse the repro's checkpoint), in one process
    # where all steps share the backbone: its metrics must still equal a repro's exactly.
    shutil.rmtree(origin / ".cache" / "checkpoints")
    output = sh(sys.executable, "-m", "tlpipe.cli.main", "run", cwd=origin)
    assert "<- chosen" in output and "Fine-tuning " in output  # the leaderboard, the verdict
    # Quiet without --verbose: stage lines and the verdict, not Prefect's state lines. Lines
    # as a terminal shows them: a progress bar redraws in place there, not here (no TTY).
    assert "Finished in state" not in output and "Created temporary directory" not in output
    shown = [line for line in output.splitlines()
             if line.strip() and not re.search(r"\|\s*\d+/\d+ \[|\d+file \[", line)]
    assert len(shown) < 40, output
    assert sh("git", "status", "--porcelain", "outputs", cwd=origin) == ""
    lineage = sh(sys.executable, "-m", "tlpipe.cli.main", "lineage", "models:/dvc-test@challenger",
                 cwd=origin)
    head = sh("git", "rev-parse", "HEAD", cwd=origin).strip()
    assert f"git_commit:            {head}" in lineage
    assert "git_dirty:             false" in lineage
    output = sh(sys.executable, "-m", "tlpipe.cli.main", "reproduce", "models:/dvc-test@challenger",
                cwd=origin)
    assert "MATCH: models:/dvc-test@challenger" in output
