"""From a registered model back to its code, data and params, and rebuilding it with DVC."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient

# Registered metrics are compared at the precision the parent run logged them (float64).
METRIC_TOLERANCE = 1e-9
COMPARED_METRICS = ("accuracy", "macro_f1", "ece")


class LineageError(RuntimeError):
    pass


@dataclass
class Lineage:
    name: str
    version: str
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]

    def lines(self) -> list[str]:
        keys = ("git_commit", "git_dirty", "data_dvc_md5", "data_fingerprint",
                "dvc_lock_sha256", "params_hash", "backbone", "weights_digest",
                "prefect_flow_run_id", "pipeline_run_id")
        out = [f"model:   {self.name} version {self.version}"]
        out += [f"{key + ':':<22} {self.tags.get(key, '-')}" for key in keys]
        out.append("metrics:")
        out += [f"  {k}: {v:.6f}" for k, v in sorted(self.metrics.items())]
        out.append("params:")
        out += [f"  {k}: {v}" for k, v in sorted(self.params.items())]
        return out


def resolve_version(model_uri: str) -> ModelVersion:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` to the registry's model version."""
    match = re.fullmatch(r"models:/([^/@]+)(?:@([^/]+)|/(\d+))", model_uri)
    if not match:
        raise LineageError(f"{model_uri!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    name, alias, version = match.groups()
    client = MlflowClient()
    try:
        if alias:
            return client.get_model_version_by_alias(name, alias)
        return client.get_model_version(name, version)
    except Exception as error:
        raise LineageError(f"{model_uri}: not in the registry ({error})") from None


def lineage(model_uri: str) -> Lineage:
    version = resolve_version(model_uri)
    client = MlflowClient()
    run_id = version.tags.get("pipeline_run_id")
    if not run_id:
        raise LineageError(f"{model_uri}: version {version.version} has no pipeline_run_id tag; "
                           "it was not registered by tlpipe")
    parent = client.get_run(run_id)
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{run_id}'")
    params = {k: v for child in children for k, v in child.data.params.items()}
    return Lineage(version.name, str(version.version), dict(version.tags), params,
                   dict(parent.data.metrics))


@dataclass
class Reproduction:
    matched: bool
    registered: dict[str, float]
    rebuilt: dict[str, float]
    commit: str
    notes: list[str]


def _run(command: list[str], cwd: Path, env: dict | None = None) -> None:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise LineageError(f"`{' '.join(command)}` failed in {cwd}:\n{result.stdout[-2000:]}"
                           f"\n{result.stderr[-2000:]}")


def reproduce(model_uri: str, project: Path, keep: bool = False) -> Reproduction:
    """Check out the model's commit and data in a separate worktree, ``dvc repro``, compare."""
    record = lineage(model_uri)
    commit, notes = record.tags.get("git_commit", ""), []
    if not re.fullmatch(r"[0-9a-f]{40}", commit):
        raise LineageError(f"{model_uri}: no git commit recorded; cannot reproduce")
    if record.tags.get("git_dirty") == "true":
        notes.append("registered from a working tree with uncommitted changes: the commit may "
                     "not hold the exact code or params")
    dvc = [sys.executable, "-m", "dvc"]
    # The stages run this interpreter's tlpipe and log to this project's MLflow store.
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    worktree = Path(tempfile.mkdtemp(prefix="tlpipe-reproduce-"))
    try:
        _run(["git", "worktree", "add", "--detach", "--force", str(worktree), commit], project)
        # Share the project's DVC cache, so the data comes back without a remote.
        _run([*dvc, "config", "--local", "cache.dir", str(project / ".dvc" / "cache")], worktree)
        try:
            _run([*dvc, "checkout", "--quiet"], worktree, env)
        except LineageError as error:
            raise LineageError(f"{error}\nThe data of commit {commit[:12]} is not in the DVC "
                               "cache: run `dvc pull` in the project first") from None
        _run([*dvc, "repro", "--quiet"], worktree, env)
        rebuilt_all = json.loads((worktree / "outputs" / "evaluate" / "metrics.json").read_text())
    finally:
        if not keep:
            subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=project,
                           capture_output=True)
    registered = {k: record.metrics[f"test_{k}"] for k in COMPARED_METRICS}
    rebuilt = {k: float(rebuilt_all[k]) for k in COMPARED_METRICS}
    matched = all(abs(registered[k] - rebuilt[k]) <= METRIC_TOLERANCE for k in COMPARED_METRICS)
    if keep:
        notes.append(f"worktree kept at {worktree}")
    return Reproduction(matched, registered, rebuilt, commit, notes)
