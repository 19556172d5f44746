"""Lineage: the tags that tie a run to its code, data and params, and the way back from a
registered model to them (rebuilding one is ``registry.reproduce``)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from mlflow.tracking import MlflowClient

from tlpipe import tags
from tlpipe.commands import run_command
from tlpipe.data.version import pointer_md5
from tlpipe.errors import TlpipeError
from tlpipe.registry.loader import resolve_version

CHANGED_LISTED = 10  # uncommitted files named in the git_changed tag


def git_state(project_dir: Path) -> dict[str, str]:
    """The commit, whether tracked files differ from it, and which (``git_changed``)."""
    def git(*args: str) -> str:
        return run_command(["git", *args], f"git {args[0]}", cwd=project_dir)

    try:
        commit = git("rev-parse", "HEAD")
        changed = [line.split(maxsplit=1)[-1] for line in
                   git("status", "--porcelain", "--untracked-files=no").splitlines()]
    except (RuntimeError, FileNotFoundError):
        return {tags.GIT_COMMIT: "unknown", tags.GIT_DIRTY: "unknown",
                tags.GIT_CHANGED: "unknown"}
    listed = ", ".join(changed[:CHANGED_LISTED]) + (
        f" and {len(changed) - CHANGED_LISTED} more" if len(changed) > CHANGED_LISTED else "")
    return {tags.GIT_COMMIT: commit, tags.GIT_DIRTY: str(bool(changed)).lower(),
            tags.GIT_CHANGED: listed or "-"}


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
