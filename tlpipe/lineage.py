"""Lineage: the tags that tie a run to its code, data and params; from a registered model back
to them; and rebuilding it with DVC."""

from __future__ import annotations

import hashlib
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

from tlpipe import tags
from tlpipe.commands import python_tool, run_command
from tlpipe.data_version import pointer_md5
from tlpipe.errors import TlpipeError

# Registered metrics are compared at the precision the parent run logged them (float64).
METRIC_TOLERANCE = 1e-9
COMPARED_METRICS = ("accuracy", "macro_f1", "ece")


def git_state(project_dir: Path) -> dict[str, str]:
    def git(*args: str) -> str:
        return run_command(["git", *args], f"git {args[0]}", cwd=project_dir)

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (RuntimeError, FileNotFoundError):
        return {tags.GIT_COMMIT: "unknown", tags.GIT_DIRTY: "unknown"}
    return {tags.GIT_COMMIT: commit, tags.GIT_DIRTY: str(dirty).lower()}


def lineage_tags(project_dir: Path, data_root: Path) -> dict[str, str]:
    """Where a run came from: the git commit, the DVC version of its data, the dvc.lock hash."""
    found = git_state(project_dir)
    pointer = Path(f"{data_root}.dvc")
    found[tags.DATA_DVC_MD5] = ((pointer_md5(pointer) or "unknown") if pointer.is_file()
                                else "untracked")
    lock = project_dir / "dvc.lock"
    found[tags.DVC_LOCK_SHA256] = (hashlib.sha256(lock.read_bytes()).hexdigest()
                                   if lock.is_file() else "none")
    return found


class LineageError(TlpipeError):
    pass


@dataclass
class Lineage:
    name: str
    version: str
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]

    def lines(self) -> list[str]:
        out = [f"model:   {self.name} version {self.version}"]
        out += [f"{key + ':':<22} {self.tags.get(key, '-')}"
                for key in (*tags.LINEAGE, tags.PIPELINE_RUN_ID)]
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
    run_id = version.tags.get(tags.PIPELINE_RUN_ID)
    if not run_id:
        raise LineageError(f"{model_uri}: version {version.version} has no "
                           f"{tags.PIPELINE_RUN_ID} tag; it was not registered by tlpipe")
    parent = client.get_run(run_id)
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.`{tags.PARENT_RUN}` = '{run_id}'")
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


def reproduce(model_uri: str, project: Path, keep: bool = False) -> Reproduction:
    """Check out the model's commit and data in a separate worktree, ``dvc repro``, compare."""
    record = lineage(model_uri)
    commit, notes = record.tags.get(tags.GIT_COMMIT, ""), []
    if not re.fullmatch(r"[0-9a-f]{40}", commit):
        raise LineageError(f"{model_uri}: no git commit recorded; cannot reproduce")
    if record.tags.get(tags.GIT_DIRTY) == "true":
        notes.append("registered from a working tree with uncommitted changes: the commit may "
                     "not hold the exact code or params")
    dvc = python_tool("dvc")
    # The stages run this interpreter's tlpipe and log to this project's MLflow store.
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    worktree = Path(tempfile.mkdtemp(prefix="tlpipe-reproduce-"))
    try:
        run_command(["git", "worktree", "add", "--detach", "--force", str(worktree), commit],
                    "git worktree add", LineageError, project)
        # Share the project's DVC cache, so the data comes back without a remote.
        run_command([*dvc, "config", "--local", "cache.dir", str(project / ".dvc" / "cache")],
                    "dvc config", LineageError, worktree)
        try:
            run_command([*dvc, "checkout", "--quiet"], "dvc checkout", LineageError, worktree,
                        env)
        except LineageError as error:
            raise LineageError(f"{error}\nThe data of commit {commit[:12]} is not in the DVC "
                               "cache: run `dvc pull` in the project first") from None
        run_command([*dvc, "repro", "--quiet"], "dvc repro", LineageError, worktree, env)
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
