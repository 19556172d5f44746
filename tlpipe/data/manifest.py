"""From a folder of class folders to a manifest: one row per file, with a stable split.

Splits are assigned from each file's content hash, so adding images never moves an old image to
another split, and identical content always lands in the same split.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from tlpipe.config import DataConfig, SplitConfig
from tlpipe.data import image_facts
from tlpipe.data.layout import SPLITS, Layout, assign_split, unreadable
from tlpipe.errors import TlpipeError
from tlpipe.fsio import file_sha256, sha256_text, write_atomic
from tlpipe.vectors import images

# What a file holds, read from it; and what its stat says, by which an unchanged file is known.
FACTS = ["sha256", "bytes", "format", "width", "height", "mode", "decodable", "error",
         "inside_root"]
STAT = ["path", "size", "mtime_ns", "inode"]
# How many files a scan read (the rest were known by their stat): a fact of the scan, not of
# the data, so it is not saved with the manifest.
FILES_READ = "files_read"
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
COLUMNS = [
    "path", "label", "source_split", "sha256", "bytes", "format", "width", "height", "mode",
    "decodable", "error", "inside_root", "split",
]


class DataLayoutError(TlpipeError):
    """A data folder that is not a folder of class folders."""


class DataChangedError(TlpipeError):
    """Files of the data folder changed while the scan read them."""


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
    hidden = sorted({
        entry.name for parent in parents for entry in parent.iterdir()
        if entry.is_dir() and entry.name.startswith(".")
        and entry.name not in data.ignored_names and _holds_images(entry)})
    return Layout(present, tuple(classes), tuple(hidden))


def _holds_images(folder: Path) -> bool:
    return any(child.suffix.lower() in IMAGE_SUFFIXES for child in folder.iterdir())


def _ignored(name: str, data: DataConfig) -> bool:
    return name.startswith(".") or name in data.ignored_names


def list_files(root: Path, layout: Layout, data: DataConfig) -> pd.DataFrame:
    """Every file under the class folders, in a stable order, with what its stat says: its
    path from ``root``, label, source split, size, modification time and inode."""
    rows: list[tuple] = []
    parents = [(f"{s}/", s) for s in layout.source_splits] or [("", None)]
    for prefix, source_split in parents:
        for label in layout.classes:
            if (root / prefix / label).is_dir():
                _walk(root / prefix / label, f"{prefix}{label}/", label, source_split, data,
                      rows)
    return pd.DataFrame(rows, columns=["path", "label", "source_split", *STAT[1:]])


def _walk(folder: Path, prefix: str, label: str, source_split: str | None, data: DataConfig,
          rows: list[tuple]) -> None:
    # os.scandir, not pathlib: at 100k files pathlib's parsing was most of a no-change scan.
    with os.scandir(folder) as listing:
        entries = sorted((e for e in listing if not _ignored(e.name, data)),
                         key=lambda entry: entry.name)
    for entry in entries:
        if _is_folder(entry):  # like os.walk: a link to a folder is not followed
            continue
        try:
            info = entry.stat()
            facts = (info.st_size, info.st_mtime_ns, info.st_ino)
        except OSError:  # a dangling link: described (as unreadable) every time
            facts = (-1, -1, -1)
        rows.append((f"{prefix}{entry.name}", label, source_split, *facts))
    for entry in entries:
        if _is_folder(entry) and not entry.is_symlink():
            _walk(Path(entry.path), f"{prefix}{entry.name}/", label, source_split, data, rows)


def _is_folder(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # a symlink loop: listed as a file that cannot be read
        return False


def _describe_file(path: Path, root: Path, max_pixels: int) -> dict:
    inside, error = unreadable(path, root)
    if error:
        return {"sha256": sha256_text("unread", path), "bytes": 0,
                "format": None, "width": None, "height": None, "mode": None,
                "decodable": False, "error": error, "inside_root": inside}
    data = path.read_bytes()
    info = image_facts.inspect_image(data, max_pixels)
    return {
        "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "format": info.format,
        "width": info.width, "height": info.height, "mode": info.mode,
        "decodable": info.decodable, "error": info.error, "inside_root": inside,
    }


def build_manifest(root: Path, data: DataConfig, split: SplitConfig, max_pixels: int,
                   workers: int | None = None, state_dir: Path | None = None,
                   files: pd.DataFrame | None = None) -> pd.DataFrame:
    """Scan ``root`` and describe every image; ``df.attrs['classes']`` keeps empty classes too
    (``tlpipe.data.scan`` takes texts too; ``files``: what ``list_files`` found, if known).

    With ``state_dir``, a file with the same path, size, modification time and inode as at the
    last scan is not read again (DVC's own state works the same way): a scan of an unchanged
    folder only lists and stats it, and new files are read and hashed in parallel threads.
    """
    root = Path(root)
    layout = detect_layout(root, data)
    files = list_files(root, layout, data) if files is None else files
    state_file = state_dir and Path(state_dir) / f"{_state_name(root, max_pixels)}.parquet"
    known = _load_state(state_file, files[STAT])
    unread = files.index.difference(known.index).tolist()
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        fresh = pd.DataFrame(list(tqdm(
            pool.map(lambda index: _describe_file(root / files.at[index, "path"], root,
                                                  max_pixels), unread),
            total=len(unread), desc="manifest", unit="file")), index=unread, columns=FACTS)
    _unchanged_while_read(root, files.loc[unread])
    parts = [part for part in (known, fresh) if len(part)]
    facts = pd.concat(parts).sort_index() if parts else fresh
    frame = files[["path", "label", "source_split"]].assign(
        **{column: facts[column].to_numpy() for column in FACTS})
    frame["split"] = [assign_split(sha256, source_split, layout, split) for sha256, source_split
                      in zip(frame["sha256"], frame["source_split"], strict=True)]
    frame = frame[COLUMNS].astype({"width": "Int64", "height": "Int64", "bytes": "int64"})
    if state_file:
        _save_state(state_file, files[STAT], frame)
    # Nothing location-specific is stored: the file must hash the same in every checkout.
    frame.attrs["classes"] = list(layout.classes)
    frame.attrs["hidden_folders"] = list(layout.hidden)
    frame.attrs[FILES_READ] = len(unread)
    return frame


def _unchanged_while_read(root: Path, listed: pd.DataFrame) -> None:
    """Stop, recording nothing, if a file read by this scan changed (or went) between being
    listed and being read: a manifest, and so a data version, must describe one state."""
    changed = []
    for path, size, mtime_ns in zip(listed["path"], listed["size"], listed["mtime_ns"],
                                    strict=True):
        if size < 0:
            continue  # unreadable when listed: described as such
        try:
            now = (root / path).stat()
        except OSError:
            changed.append(path)
            continue
        if (now.st_size, now.st_mtime_ns) != (size, mtime_ns):
            changed.append(path)
    if changed:
        raise DataChangedError(
            f"{root}: {len(changed)} file(s) changed while they were read (first: "
            f"{changed[0]}); nothing was recorded. Run again once the folder is still (finish "
            "the copy or sync that is writing to it)")


def _state_name(root: Path, max_pixels: int) -> str:
    # What a file's facts depend on besides its bytes: the code that reads them (decoding
    # included), the limit.
    code = [file_sha256(file) for file in (__file__, image_facts.__file__, images.__file__)]
    return sha256_text(root.resolve(), max_pixels, *code)[:24]


def _load_state(state_file: Path | None, stats: pd.DataFrame) -> pd.DataFrame:
    """The facts of files unchanged since the last scan, indexed by their position now."""
    if not state_file or not state_file.is_file():
        return pd.DataFrame(columns=FACTS)
    try:
        state = pd.read_parquet(state_file)
    except Exception:  # an unreadable state only costs a full scan
        return pd.DataFrame(columns=FACTS)
    if state.attrs.get("sha256") != _state_digest(state):  # changed on disk: trust none of it
        tqdm.write(f"manifest: WARNING: {state_file} does not match its digest; every file "
                   "is read again")
        return pd.DataFrame(columns=FACTS)
    now = stats.reset_index().merge(state, on=STAT, how="inner")
    now = now[now["size"] >= 0]
    return now.set_index("index")[FACTS]


def _save_state(state_file: Path, stats: pd.DataFrame, frame: pd.DataFrame) -> None:
    state = pd.concat([stats, frame[FACTS].reset_index(drop=True)], axis=1)
    state.attrs["sha256"] = _state_digest(state)
    write_atomic(state_file, lambda path: state.to_parquet(path, index=False))


def _state_digest(state: pd.DataFrame) -> str:
    """The scan state's content, row by row: a file's remembered facts are trusted only while
    the state still hashes to what was written with it."""
    return hashlib.sha256(pd.util.hash_pandas_object(state, index=False).to_numpy().tobytes()
                          ).hexdigest()


def manifest_fingerprint(frame: pd.DataFrame) -> str:
    """The data version: what each file holds, its label and split; nothing about where it lives."""
    rows = frame.sort_values("path")[["path", "label", "sha256", "split"]].astype(str)
    lines = rows["path"] + "\x1f" + rows["label"] + "\x1f" + rows["sha256"] + "\x1f" + rows["split"]
    return hashlib.sha256("".join(line + "\n" for line in lines).encode()).hexdigest()


def save_manifest(frame: pd.DataFrame, target: Path) -> Path:
    """The manifest as Parquet, without the scan's own statistics: the same data must give the
    same bytes (and DVC hash) whether the scan state was warm or cold."""
    stored = frame.copy(deep=False)
    stored.attrs = {key: value for key, value in frame.attrs.items() if key != FILES_READ}
    return write_atomic(target, lambda path: stored.to_parquet(path, index=False))


def load_manifest(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path)
