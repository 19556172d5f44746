"""The version of the training data as DVC sees it: record it, commit its pointer, push it.

A retrain must know whether the images changed since the champion was trained. DVC already
hashes a data folder for `dvc add` (and remembers file hashes by inode and mtime, so an
unchanged folder is re-checked quickly); its directory hash is the data version that every
registered model carries in its `data_dvc_md5` tag.

At 100k files even DVC's re-check of an unchanged folder costs a per-file state lookup and a
rebuilt directory listing. So the folder's stat (every file's path, size, modification time
and inode: what DVC's own state trusts) is taken in one walk and kept with the version `dvc add`
gave it; while both the stat and the pointer are as they were, the pointer's version stands
and DVC is not asked again. Any file added, removed, touched or replaced changes the stat.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

from tlpipe.commands import python_tool, run_command
from tlpipe.errors import TlpipeError
from tlpipe.fsio import sha256_text, write_json


class DataVersionError(TlpipeError):
    pass


@dataclass(frozen=True)
class DataVersion:
    md5: str                 # DVC's directory hash of the data folder
    pointer: str             # the .dvc file, relative to the project
    committed: str | None    # the git commit made for a new pointer, if any
    pushed: bool             # sent to the project's default DVC remote


def _run(command: list[str], project: Path, what: str, timeout_s: float | None = None) -> str:
    return run_command(command, what, DataVersionError, project, timeout_s=timeout_s)


def _dvc(project: Path, *args: str, timeout_s: float | None = None) -> str:
    return _run([*python_tool("dvc"), *args], project, f"dvc {args[0]}", timeout_s)


def pointer_md5(pointer: Path) -> str | None:
    """The data version a .dvc pointer records, or None where there is no pointer."""
    if not pointer.is_file():
        return None
    outs = (yaml.safe_load(pointer.read_text()) or {}).get("outs") or [{}]
    return outs[0].get("md5")


def _git_identity(project: Path) -> list[str]:
    """A commit identity for machines (schedulers, CI) that have none configured."""
    configured = subprocess.run(["git", "config", "user.email"], cwd=project,
                                capture_output=True, text=True).stdout.strip()
    return [] if configured else ["-c", "user.name=tlpipe", "-c", "user.email=tlpipe@localhost"]


def _commit_pointer(project: Path, paths: list[Path], md5: str) -> str | None:
    relative = [str(path.relative_to(project)) for path in paths if path.exists()]
    _run(["git", "add", "--", *relative], project, "git add")
    staged = subprocess.run(["git", "diff", "--cached", "--quiet", "--", *relative],
                            cwd=project).returncode
    if staged == 0:
        return None  # the pointer already committed names this data
    _run(["git", *_git_identity(project), "commit", "--quiet", "--only",
          "-m", f"data: {relative[0]} at {md5[:12]} (tlpipe retrain)", "--", *relative],
         project, "git commit")
    return _run(["git", "rev-parse", "HEAD"], project, "git rev-parse")


def _has_default_remote(project: Path) -> bool:
    result = subprocess.run([*python_tool("dvc"), "remote", "default"], cwd=project,
                            capture_output=True, text=True)
    return result.returncode == 0 and bool(result.stdout.strip())


def folder_stat(root: Path) -> str:
    """A digest of the path, size, modification time and inode of every file under ``root``."""
    digest = hashlib.sha256()
    for folder, subfolders, names in os.walk(root):
        subfolders.sort()
        for name in sorted(names):
            path = os.path.join(folder, name)
            try:
                info = os.stat(path)
                facts = (info.st_size, info.st_mtime_ns, info.st_ino)
            except OSError:  # a dangling link
                facts = None
            digest.update(f"{os.path.relpath(path, root)}\x1f{facts}\n".encode())
    return digest.hexdigest()


def _known_versions(state_dir: Path | None, data_root: Path) -> tuple[Path | None, dict]:
    if state_dir is None:
        return None, {}
    record = state_dir / f"data-version-{sha256_text(data_root)[:16]}.json"
    try:
        return record, json.loads(record.read_text())
    except (OSError, ValueError):
        return record, {}


def record_data_version(data_root: Path, project: Path, commit: bool = True,
                        push: bool = True, state_dir: Path | None = None,
                        push_timeout_s: float | None = None) -> DataVersion:
    """`dvc add` the data folder, commit its pointer if it changed, push to the default remote.

    With ``state_dir``, a folder whose stat and pointer are unchanged since the last call is
    not handed to DVC again (nor pushed again once pushed).

    Raises DataVersionError naming the folder when DVC cannot track it (outside the project,
    no `dvc init`, not a git repository).
    """
    data_root, project = data_root.resolve(), project.resolve()
    if not data_root.is_dir():
        raise DataVersionError(f"data.root {data_root}: no such folder")
    if not data_root.is_relative_to(project):
        raise DataVersionError(
            f"data.root {data_root} is outside the project {project}: DVC can only version "
            "data inside it. Move the images under the project (e.g. data/raw/) or set "
            "retrain.version_data: false to compare data by content fingerprint only")
    if not (project / ".dvc").is_dir():
        raise DataVersionError(f"{project} has no DVC repository: run `dvc init` there first")
    pointer = Path(f"{data_root}.dvc")
    record, known = _known_versions(state_dir, data_root)
    current = pointer_md5(pointer)
    unchanged = (record is not None and current is not None and known.get("md5") == current
                 and known.get("stat") == folder_stat(data_root))
    if not unchanged:
        _dvc(project, "add", "--quiet", str(data_root.relative_to(project)))
        # After `dvc add`: it may have replaced the files by links to its cache.
        known = {"md5": pointer_md5(pointer),
                 "stat": folder_stat(data_root) if record else None}
    md5 = known["md5"]
    if not md5:
        raise DataVersionError(f"{pointer}: dvc add wrote no md5")
    committed = (_commit_pointer(project, [pointer, data_root.parent / ".gitignore"], md5)
                 if commit else None)
    pushed = False
    if push and _has_default_remote(project):
        if known.get("pushed") != md5:
            _dvc(project, "push", "--quiet", str(pointer.relative_to(project)),
                 timeout_s=push_timeout_s)
            known["pushed"] = md5
        pushed = True
    if record is not None:
        write_json(record, known)
    return DataVersion(md5, str(pointer.relative_to(project)), committed, pushed)
