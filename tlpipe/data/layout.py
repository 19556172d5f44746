"""What a data folder provides (splits, classes), the split each file lands in, and which
files must not be read: shared by the image and text manifests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tlpipe.config import SplitConfig

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Layout:
    """Which splits the source folder provides, and the class folders under each."""

    source_splits: tuple[str, ...]  # empty when the folder holds class folders directly
    classes: tuple[str, ...]
    # Folders named like hidden ones (".name") that hold images: not read as classes, and
    # reported by validation so that no images are left out unnoticed.
    hidden: tuple[str, ...] = ()


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


def unreadable(path: Path, root: Path) -> tuple[bool, str | None]:
    """Whether ``path`` is inside ``root``, and why it must not be read (or None): decided
    before opening anything, since a FIFO would hang the read and /dev/zero never end it."""
    try:
        inside, loop = path.resolve().is_relative_to(root.resolve()), False
    except (OSError, RuntimeError):  # RuntimeError: Python 3.11's word for a symlink loop
        inside, loop = True, True
    if loop or not inside or not path.is_file():
        return inside, ("a symlink loop; not read" if loop else
                        "symlink to a file outside the data folder; not read" if not inside
                        else "not a regular file (a FIFO, device or socket), or a dangling "
                        "link; not read")
    return inside, None


def modality(frame: pd.DataFrame) -> str:
    """"image" or "text": what a manifest (or a frame made from one) describes."""
    return frame.attrs.get("modality", "image")


def items_called(kind: str) -> str:
    """What messages and reports call the items of a modality ("image" or "text")."""
    return "texts" if kind == "text" else "images"


def shown_from(frame: pd.DataFrame, root: Path) -> Path | dict[str, str]:
    """What the reports show a manifest's files from: the data folder, or each text."""
    return dict(zip(frame["path"], frame["text"], strict=True)) if modality(frame) == "text" \
        else root
