"""Texts to a manifest: one row per text, from class folders of ``.txt`` files (the layout of
image folders and of scikit-learn's ``load_files``) or from one CSV or JSON Lines table.

A row holds the text itself, so no later stage reads the data again and a table's rows need
no files of their own. The split comes from the text's content hash, as an image's does: the
same text always lands in the same split, whichever file or table row it came from.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from tlpipe.config import DataConfig, SplitConfig, TextConfig
from tlpipe.data.layout import Layout, assign_split, unreadable
from tlpipe.data.text_facts import (
    MAX_TABLE_BYTES,
    TABLE_SUFFIXES,
    TEXT_SUFFIXES,
    inspect_text,
    read_text_table,
)

FACTS = ["sha256", "bytes", "format", "chars", "words", "normalised_sha256", "decodable",
         "error", "inside_root", "text"]
COLUMNS = ["path", "label", "source_split", *FACTS[:-1], "split", "text"]


def is_table(root: Path) -> bool:
    return Path(root).is_file() and Path(root).suffix.lower() in TABLE_SUFFIXES


def describe_text(data: bytes, suffix: str, config: TextConfig) -> dict:
    """The facts of one text's bytes; its ``sha256`` is of the decoded text, so a text keeps
    its identity (and split) whether a file with a byte-order mark or a table row held it."""
    info = inspect_text(data, config.max_bytes)
    error = info.error or (None if suffix in TEXT_SUFFIXES else
                           f"a {suffix or 'suffixless'} file among texts: only .txt files are "
                           "read as texts")
    text = data.decode("utf-8-sig") if info.decodable else None
    return {"sha256": hashlib.sha256(text.encode() if text is not None else data).hexdigest(),
            "bytes": len(data), "format": "text", "chars": info.chars, "words": info.words,
            "normalised_sha256": info.normalised_sha256, "decodable": error is None,
            "error": error, "inside_root": True, "text": text if error is None else None}


def _describe_file(path: Path, root: Path, config: TextConfig) -> dict:
    inside, error = unreadable(path, root)
    size = path.stat().st_size if error is None else 0
    if error is None and size > config.max_bytes:
        error = (f"{size} bytes, more than the limit of {config.max_bytes} (text.max_bytes); "
                 "not read")
    if error:
        return {"sha256": hashlib.sha256(f"unread {path}".encode()).hexdigest(), "bytes": size,
                "format": None, "chars": None, "words": None, "normalised_sha256": None,
                "decodable": False, "error": error, "inside_root": inside, "text": None}
    return describe_text(path.read_bytes(), path.suffix.lower(), config)


def files_manifest(root: Path, files: pd.DataFrame, layout: Layout, split: SplitConfig,
                   config: TextConfig | None = None) -> pd.DataFrame:
    """The manifest of class folders of texts: ``files`` as ``manifest.list_files`` lists them."""
    config = config or TextConfig()
    facts = [_describe_file(root / path, root, config)
             for path in tqdm(files["path"], desc="manifest", unit="text")]
    frame = files[["path", "label", "source_split"]].reset_index(drop=True).join(
        pd.DataFrame(facts, columns=FACTS))
    return _finish(frame, layout, split)


def table_manifest(table: Path, data: DataConfig, split: SplitConfig,
                   config: TextConfig | None = None) -> pd.DataFrame:
    """The manifest of a CSV or JSON Lines table: a row's path is ``<file>:<line>``."""
    config = config or TextConfig()
    rows = read_text_table(table, data.text_column, data.label_column, MAX_TABLE_BYTES)
    frame = pd.DataFrame(
        [{"path": f"{table.name}:{row.line}", "label": row.label, "source_split": None,
          **describe_text(row.text.encode(), ".txt", config)} for row in rows])
    return _finish(frame, Layout((), tuple(sorted(frame["label"].unique()))), split)


def _finish(frame: pd.DataFrame, layout: Layout, split: SplitConfig) -> pd.DataFrame:
    frame["split"] = [assign_split(sha256, source_split, layout, split) for sha256, source_split
                      in zip(frame["sha256"], frame["source_split"], strict=True)]
    frame = frame[COLUMNS].astype({"chars": "Int64", "words": "Int64", "bytes": "int64"})
    frame.attrs.update(classes=list(layout.classes), hidden_folders=list(layout.hidden),
                       files_read=len(frame), modality="text")
    return frame
