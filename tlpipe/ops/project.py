"""`tlpipe init`: a ready project around a folder of labelled images or texts (or a table of texts).

The project is a git repository with DVC, tlpipe's settings and pipeline files (from
``tlpipe/templates``, so an installed tlpipe carries them), the data under ``data/raw/`` pinned
by ``dvc add``, and a first commit. The data is hard-linked, not copied, where it can be: the
project then costs no disk space however large the folder is.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from tlpipe.commands import python_tool, run_command
from tlpipe.config import DataConfig, ValidationConfig, model_name_for
from tlpipe.data.manifest import IMAGE_SUFFIXES, SPLITS, DataLayoutError, detect_layout
from tlpipe.data.text_facts import MAX_TABLE_BYTES, TEXT_SUFFIXES, TextTableError, read_text_table
from tlpipe.data.text_manifest import is_table
from tlpipe.errors import SettingsError, TlpipeError

# Above this, a folder that cannot be hard-linked is not copied unless --copy says so.
COPY_LIMIT_BYTES = 2 * 1024**3
# Written into every new project from the package's templates (gitignore as .gitignore).
TEMPLATE_FILES = ("params.yaml", "dvc.yaml", "prefect.yaml", "gitignore", "README.md",
                  "plots/epochs.json", "plots/confusion_counts.json")


class InitError(TlpipeError):
    """A project that cannot be made as asked; nothing is left half-made in its place."""


@dataclass(frozen=True)
class NewProject:
    root: Path
    model_name: str
    classes: list[str]
    data: Path              # the data folder inside the project, relative to it
    placed: str             # "hard-linked", "copied" or "empty"
    why: str                # why the data was placed that way
    notes: tuple[str, ...] = ()  # what init measured in the data and set (or could not)


def template(name: str) -> str:
    """The template of project file ``name``; stored as NAME.tmpl, so that neither DVC nor
    git takes tlpipe's own copies (a dvc.yaml, a .gitignore) for real ones."""
    return (resources.files("tlpipe") / "templates" / f"{name}.tmpl").read_text()


def _yaml_scalar(value: str) -> str:
    return value if re.fullmatch(r"[A-Za-z0-9_./-]+", value) else json.dumps(value)


def render_params(data_root: str, expected_classes: list[str] | None, model_name: str,
                  imbalance: float | None = None) -> str:
    """The documented params.yaml with a project's data, classes and model name filled in;
    with ``imbalance`` (measured, above the default limit), a limit the data passes."""
    classes = ("null" if expected_classes is None
               else "[" + ", ".join(map(_yaml_scalar, expected_classes)) + "]")
    text = (template("params.yaml").replace("{{data_root}}", _yaml_scalar(data_root))
            .replace("{{expected_classes}}", classes)
            .replace("{{model_name}}", _yaml_scalar(model_name)))
    if imbalance is not None:
        default = f"  max_class_imbalance: {ValidationConfig().max_class_imbalance}\n"
        text = text.replace(default, f"  max_class_imbalance: {math.ceil(imbalance):.1f}"
                                     f"        # {imbalance:.1f}x measured at tlpipe init\n")
    return text


def data_notes(source: Path, classes: list[str]) -> tuple[float | None, tuple[str, ...]]:
    """What the default validation limits would say about the data at ``source``: the
    imbalance to write instead of the default when it is above it, and notes for the user."""
    counts = _counts(source, classes)
    if not counts or min(counts.values()) == 0:
        return None, ()
    limits = ValidationConfig()
    largest, smallest = max(counts, key=counts.get), min(counts, key=counts.get)
    ratio = counts[largest] / counts[smallest]
    notes = []
    if ratio > limits.max_class_imbalance:
        notes.append(f"classes are imbalanced {ratio:.1f}x ({largest}: {counts[largest]} "
                     f"images, {smallest}: {counts[smallest]}): validation.max_class_imbalance "
                     f"is written as {math.ceil(ratio)} (default {limits.max_class_imbalance:g})"
                     " so the first run passes; training weights the classes to counter it")
    few = sorted(label for label, count in counts.items()
                 if count < limits.min_images_per_class)
    if few:
        notes.append(f"{', '.join(f'{label} ({counts[label]})' for label in few)}: fewer "
                     f"images than validation.min_images_per_class "
                     f"({limits.min_images_per_class}); the first run will fail validation "
                     "until these classes have more")
    return (ratio if ratio > limits.max_class_imbalance else None), tuple(notes)


def _counts(source: Path, classes: list[str]) -> dict[str, int]:
    """Images or texts per class: files in the class folders, or a table's rows."""
    if is_table(source):
        labels = [row.label for row in _table_rows(source)]
        return {label: labels.count(label) for label in classes}
    parents = [source / split for split in SPLITS if (source / split).is_dir()] or [source]
    suffixes = IMAGE_SUFFIXES | TEXT_SUFFIXES
    return {label: sum(1 for parent in parents if (parent / label).is_dir()
                       for path in (parent / label).rglob("*")
                       if path.suffix.lower() in suffixes) for label in classes}


def _table_rows(table: Path) -> list:
    """A CSV or JSON Lines file's rows, under the default column names (text, label)."""
    data = DataConfig()
    try:
        return read_text_table(table, data.text_column, data.label_column, MAX_TABLE_BYTES)
    except TextTableError as error:
        raise SettingsError(f"--data: {error}. tlpipe init reads the columns "
                            f"{data.text_column!r} and {data.label_column!r}; rename them, or "
                            "make the project without --data and set data.root, "
                            "data.text_column and data.label_column") from None


def _folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def place_data(source: Path, destination: Path, copy: bool) -> tuple[str, str]:
    """Hard-link (or with ``copy``, copy) ``source`` to ``destination``; say how and why."""
    if source.is_file():  # a table of texts
        if copy:
            shutil.copy2(source, destination)
            return "copied", "--copy asked for a copy"
        try:
            os.link(source, destination)
            return "hard-linked", "no disk space used"
        except OSError as error:
            shutil.copy2(source, destination)
            return "copied", f"hard links are impossible here ({error.strerror})"
    if copy:
        shutil.copytree(source, destination, symlinks=True)
        return "copied", "--copy asked for a copy"
    try:
        shutil.copytree(source, destination, symlinks=True, copy_function=os.link)
        return "hard-linked", ("no disk space used; DVC's cache links the same files, and "
                               "marks them read-only so an edit in place cannot corrupt it")
    except OSError as error:  # another filesystem, or one without hard links
        shutil.rmtree(destination, ignore_errors=True)
        size = _folder_size(source)
        if size > COPY_LIMIT_BYTES:
            raise InitError(
                f"{source} cannot be hard-linked into {destination.parent} ({error.strerror}) "
                f"and is {size / 1024**3:.1f} GiB, too large to copy unasked: make the project "
                "on the data's filesystem, or pass --copy") from None
        shutil.copytree(source, destination, symlinks=True)
        return "copied", (f"hard links are impossible here ({error.strerror}); "
                          f"{size / 1024**2:.0f} MiB is small enough to copy")


def _git_identity(project: Path) -> dict[str, str]:
    """git commits need a name; a machine without one commits as tlpipe."""
    try:
        run_command(["git", "config", "user.email"], "git config", InitError, project)
        return dict(os.environ)
    except InitError:
        return {**os.environ, "GIT_AUTHOR_NAME": "tlpipe", "GIT_AUTHOR_EMAIL": "tlpipe@localhost",
                "GIT_COMMITTER_NAME": "tlpipe", "GIT_COMMITTER_EMAIL": "tlpipe@localhost"}


def init_project(root: Path, source: Path | None = None, copy: bool = False) -> NewProject:
    root = Path(root).resolve()
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise SettingsError(f"{root} exists and is not an empty folder; name a new folder")
    classes: list[str] = []
    table = source is not None and is_table(source)
    if source is not None:
        source = Path(source).resolve()
        try:
            classes = (sorted({row.label for row in _table_rows(source)}) if table
                       else list(detect_layout(source, DataConfig()).classes))
        except DataLayoutError as error:  # an argument that cannot be used: exit code 2
            raise SettingsError(f"--data: {error}") from None
        if root.is_relative_to(source) or source.is_relative_to(root):
            raise SettingsError(f"the project {root} and the data {source} must not contain "
                                "each other")
    name = model_name_for(source.stem if table else (source or root).name)
    data = Path("data/raw") / (f"{name}{source.suffix.lower()}" if table else name)
    root.mkdir(parents=True, exist_ok=True)
    try:
        return _make(root, source, data, name, classes, copy)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise


def _make(root: Path, source: Path | None, data: Path, name: str, classes: list[str],
          copy: bool) -> NewProject:
    def run(command: list[str], what: str) -> str:
        return run_command(command, what, InitError, root, env)

    imbalance, notes = data_notes(source, classes) if source else (None, ())
    env = _git_identity(root)
    run(["git", "init", "-q"], "git init")
    dvc = python_tool("dvc")
    run([*dvc, "init", "-q"], "dvc init")
    run([*dvc, "config", "core.analytics", "false"], "dvc config")
    # Hard links where possible, so `dvc add` and `dvc checkout` copy no image.
    run([*dvc, "config", "cache.type", "hardlink,copy"], "dvc config")
    for file in TEMPLATE_FILES:
        text = (render_params(str(data), classes or None, name, imbalance)
                if file == "params.yaml"
                else template(file).replace("{{model_name}}", name))
        target = root / file.replace("gitignore", ".gitignore")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    (root / data).parent.mkdir(parents=True)
    if source is None:
        (root / data).mkdir()
        placed, why = "empty", "no --data given: put class folders here"
    else:
        placed, why = place_data(source, root / data, copy)
        run([*dvc, "add", "-q", str(data)], "dvc add")
    run(["git", "add", "-A"], "git add")
    run(["git", "commit", "-q", "-m", f"tlpipe init: {name}"], "git commit")
    return NewProject(root, name, classes, data, placed, why, notes)
