"""Scoring many image files or texts with a loaded model: batches, a progress bar, per-file
errors. Texts come from .txt files, folders of them, CSV or JSON Lines tables (one text per
row), or standard input (one text per line)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from tlpipe.data.text_facts import (
    MAX_TABLE_BYTES,
    TABLE_SUFFIXES,
    TEXT_SUFFIXES,
    inspect_text,
    read_text_table,
)
from tlpipe.serving.pyfunc import IMAGE_COLUMN, TEXT_COLUMN

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def image_files(inputs: list[Path]) -> list[Path]:
    """Files as given, and every image file under the given folders, in a stable order."""
    found: list[Path] = []
    for item in inputs:
        if item.is_dir():
            found += sorted(p for p in item.rglob("*")
                            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            found.append(item)
    return found


def predict_files(model, paths: list[Path], batch_size: int) -> pd.DataFrame:
    """One row per file: ``path``, the model's columns, and ``error`` ("" when it was scored).

    An unreadable file gets its error instead of stopping the others.
    """
    frames = []
    for start in tqdm(range(0, len(paths), batch_size), desc="predict", unit="batch",
                      disable=len(paths) <= batch_size):
        batch = paths[start:start + batch_size]
        try:
            frames.append(_score(model, batch))
        except (ValueError, OSError):  # a bad file in the batch: score one by one to isolate it
            frames += [_score_one(model, path) for path in batch]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["path"])


def _score(model, paths: list[Path]) -> pd.DataFrame:
    frame = model.predict(pd.DataFrame({IMAGE_COLUMN: [path.read_bytes() for path in paths]}))
    frame.insert(0, "path", [str(path) for path in paths])
    frame["error"] = ""
    return frame


def _score_one(model, path: Path) -> pd.DataFrame:
    try:
        return _score(model, [path])
    except (ValueError, OSError) as error:
        return pd.DataFrame({"path": [str(path)], "error": [str(error)]})


STDIN = Path("-")  # `tlpipe predict -`: one text per line of standard input


def text_inputs(inputs: list[Path], text_column: str, max_bytes: int, stdin_lines: list[str]
                ) -> pd.DataFrame:
    """``path`` (a file, ``<table>:<line>`` or ``stdin:<line>``), ``text`` and ``error`` (""
    when the text can be scored) for every text the inputs hold, in order."""
    rows: list[tuple[str, str, str]] = []
    for item in inputs:
        if item == STDIN:
            rows += [(f"stdin:{number}", line, "") for number, line in
                     enumerate(stdin_lines, start=1) if line.strip()]
        elif item.suffix.lower() in TABLE_SUFFIXES:
            rows += [(f"{item}:{row.line}", row.text, "" if row.text.strip() else "empty text")
                     for row in read_text_table(item, text_column, None, MAX_TABLE_BYTES)]
        else:
            files = (sorted(p for p in item.rglob("*") if p.is_file()
                            and p.suffix.lower() in TEXT_SUFFIXES) if item.is_dir() else [item])
            rows += [_text_file(file, max_bytes) for file in files]
    return pd.DataFrame(rows, columns=["path", "text", "error"])


def _text_file(file: Path, max_bytes: int) -> tuple[str, str, str]:
    size = file.stat().st_size
    if size > max_bytes:
        return str(file), "", f"{size} bytes, more than the limit of {max_bytes}; not read"
    info = inspect_text(file.read_bytes(), max_bytes)
    return (str(file), file.read_text(encoding="utf-8-sig") if info.decodable else "",
            info.error or "")


def predict_texts(model, texts: pd.DataFrame, batch_size: int) -> pd.DataFrame:
    """One row per text, as ``predict_files``; a text that could not be read keeps its error."""
    good = texts[texts["error"] == ""]
    frames = [texts.loc[texts["error"] != "", ["path", "error"]]]
    for start in tqdm(range(0, len(good), batch_size), desc="predict", unit="batch",
                      disable=len(good) <= batch_size):
        batch = good.iloc[start:start + batch_size]
        frame = model.predict(pd.DataFrame({TEXT_COLUMN: batch["text"].tolist()}))
        frame.insert(0, "path", batch["path"].tolist())
        frame["error"] = ""
        frames.append(frame)
    order = {path: index for index, path in enumerate(texts["path"])}
    joined = pd.concat([frame for frame in frames if len(frame)], ignore_index=True) \
        if any(len(frame) for frame in frames) else pd.DataFrame(columns=["path", "error"])
    return joined.sort_values("path", key=lambda paths: paths.map(order), ignore_index=True)
