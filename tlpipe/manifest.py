"""From a folder of class folders to a manifest: one row per file, with a stable split.

Splits are assigned from each file's content hash, so adding images never moves an old image to
another split, and identical content always lands in the same split.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from tlpipe.config import DataConfig, SplitConfig
from tlpipe.errors import TlpipeError
from tlpipe.fsio import sha256_text, write_atomic
from tlpipe.images import inspect_image

SPLITS = ("train", "val", "test")
COLUMNS = [
    "path", "label", "source_split", "sha256", "bytes", "format", "width", "height", "mode",
    "decodable", "error", "inside_root", "split",
]


class DataLayoutError(TlpipeError):
    """A data folder that is not a folder of class folders."""


@dataclass(frozen=True)
class Layout:
    """Which splits the source folder provides, and the class folders under each."""

    source_splits: tuple[str, ...]  # empty when the folder holds class folders directly
    classes: tuple[str, ...]


def detect_layout(root: Path, data: DataConfig) -> Layout:
    if not root.is_dir():
        raise DataLayoutError(f"{root} is not a folder: point data.root (or the folder named "
                              "on the command line) at a folder of class folders; "
                              "`tlpipe demo-data` gets the demo's")
    present = tuple(split for split in SPLITS if (root / split).is_dir())
    if present and "train" not in present:
        raise DataLayoutError(f"{root}: has {present} but no train/ folder")
    parents = [root / split for split in present] or [root]
    classes = sorted({
        entry.name for parent in parents for entry in parent.iterdir()
        if entry.is_dir() and not _ignored(entry.name, data)
    })
    if not classes:
        # Caught here: the class checks would only say "found []" without naming the folder.
        searched = " or ".join(str(parent) for parent in parents)
        raise DataLayoutError(
            f"no class folders found in {searched}: expected one folder per class holding its "
            f"images ({root}/<class>/<image>), or train/ val/ [test/] folders that each hold "
            "the class folders (train/<class>/<image>)")
    return Layout(present, tuple(classes))


def _ignored(name: str, data: DataConfig) -> bool:
    return name.startswith(".") or name in data.ignored_names


def hash_unit(sha256: str) -> float:
    """Map a content hash to [0, 1): the split assignment's only input."""
    return int(sha256[:15], 16) / 16**15


def assign_split(sha256: str, source_split: str | None, layout: Layout, split: SplitConfig) -> str:
    unit = hash_unit(sha256)
    has = set(layout.source_splits)
    if not has:
        if unit < split.test_fraction:
            return "test"
        return "val" if unit < split.test_fraction + split.val_fraction else "train"
    if source_split == "test":
        return "test"
    if source_split == "val":
        # With no test split given, the given val split is held out for testing, and the
        # early-stopping data is carved from train: the test split never chooses anything.
        return "val" if "test" in has else "test"
    if "test" not in has and "val" not in has and unit < split.test_fraction:
        return "test"
    if "val" not in has or "test" not in has:
        offset = split.test_fraction if ("test" not in has and "val" not in has) else 0.0
        if unit < offset + split.val_fraction:
            return "val"
    return "train"


def _list_files(root: Path, layout: Layout, data: DataConfig) -> list[tuple[Path, str, str | None]]:
    files = []
    parents = [(root / s, s) for s in layout.source_splits] or [(root, None)]
    for parent, source_split in parents:
        for label in layout.classes:
            class_dir = parent / label
            if not class_dir.is_dir():
                continue
            for folder, subfolders, names in os.walk(class_dir):
                subfolders[:] = sorted(d for d in subfolders if not _ignored(d, data))
                files.extend(
                    (Path(folder) / name, label, source_split)
                    for name in sorted(names) if not _ignored(name, data)
                )
    return files


def _describe_file(path: Path, root: Path, max_pixels: int) -> dict:
    inside = path.resolve().is_relative_to(root.resolve())
    # Decided before opening anything: a FIFO would hang the read, /dev/zero never end it.
    if not inside or not path.is_file():
        error = ("symlink to a file outside the data folder; not read" if not inside else
                 "not a regular file (a FIFO, device or socket); not read")
        return {"sha256": sha256_text("unread", path), "bytes": 0,
                "format": None, "width": None, "height": None, "mode": None,
                "decodable": False, "error": error, "inside_root": inside}
    data = path.read_bytes()
    info = inspect_image(data, max_pixels)
    return {
        "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "format": info.format,
        "width": info.width, "height": info.height, "mode": info.mode,
        "decodable": info.decodable, "error": info.error, "inside_root": inside,
    }


def build_manifest(root: Path, data: DataConfig, split: SplitConfig, max_pixels: int,
                   workers: int | None = None) -> pd.DataFrame:
    """Scan ``root`` and describe every file; ``df.attrs['classes']`` keeps empty classes too."""
    root = Path(root)
    layout = detect_layout(root, data)
    files = _list_files(root, layout, data)
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        described = list(tqdm(
            pool.map(lambda item: _describe_file(item[0], root, max_pixels), files),
            total=len(files), desc="manifest", unit="file",
        ))
    rows = [
        {"path": path.relative_to(root).as_posix(), "label": label, "source_split": source_split,
         **facts, "split": assign_split(facts["sha256"], source_split, layout, split)}
        for (path, label, source_split), facts in zip(files, described, strict=True)
    ]
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame = frame.astype({"width": "Int64", "height": "Int64", "bytes": "int64"})
    # Nothing location-specific is stored: the file must hash the same in every checkout.
    frame.attrs["classes"] = list(layout.classes)
    return frame


def manifest_fingerprint(frame: pd.DataFrame) -> str:
    """The data version: what each file holds, its label and split; nothing about where it lives."""
    digest = hashlib.sha256()
    columns = ["path", "label", "sha256", "split"]
    for row in frame.sort_values("path")[columns].itertuples(index=False):
        digest.update("\x1f".join(map(str, row)).encode() + b"\n")
    return digest.hexdigest()


def save_manifest(frame: pd.DataFrame, target: Path) -> Path:
    return write_atomic(target, lambda path: frame.to_parquet(path, index=False))


def load_manifest(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path)
