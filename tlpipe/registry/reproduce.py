"""Rebuilding a registered model with `dvc repro` at its commit and data, in a separate git
worktree, and comparing the rebuilt metrics with the registered ones."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlflow

from tlpipe import tags
from tlpipe.commands import python_tool, run_command
from tlpipe.registry.lineage import LineageError, lineage

# Registered metrics are compared at the precision the parent run logged them (float64).
METRIC_TOLERANCE = 1e-9
COMPARED_METRICS = ("accuracy", "macro_f1", "ece")


@dataclass
class Reproduction:
    matched: bool
    registered: dict[str, float]
    rebuilt: dict[str, float]
    commit: str
    notes: list[str]


def _streamed(command: list[str], cwd: Path, env: dict[str, str],
              progress: Callable[[str], None]) -> None:
    """Run ``command``, handing each line it prints to ``progress`` (a rebuild takes minutes:
    the user sees its stages go by); on failure raise LineageError with the end of it."""
    lines: list[str] = []
    with subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as process:
        for line in process.stdout:
            lines.append(line.rstrip())
            progress(line.rstrip())
    if process.returncode != 0:
        tail = "\n".join(lines[-30:])
        raise LineageError(f"dvc repro failed in {cwd} (`{' '.join(command)}`):\n{tail}")


def reproduce(model_uri: str, project: Path, keep: bool = False,
              progress: Callable[[str], None] = lambda line: None) -> Reproduction:
    """Check out the model's commit and data in a separate worktree, ``dvc repro`` (each line
    it prints to ``progress``), compare."""
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
        # The data only (its `dvc add` pointers): a new project's commit has no dvc.lock yet,
        # so the pipeline's outputs have nothing to check out, and all of them are rebuilt.
        pointers = run_command(["git", "ls-files", "*.dvc"], "git ls-files", LineageError,
                               worktree).split()
        if pointers:
            try:
                run_command([*dvc, "checkout", "--quiet", *pointers], "dvc checkout",
                            LineageError, worktree, env)
            except LineageError as error:
                raise LineageError(f"{error}\nThe data of commit {commit[:12]} is not in the "
                                   "DVC cache: run `dvc pull` in the project first") from None
        if not (worktree / "dvc.lock").is_file():
            notes.append(f"commit {commit[:12]} has no dvc.lock: every stage was rebuilt")
        _streamed([*dvc, "repro"], worktree, env, progress)
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
