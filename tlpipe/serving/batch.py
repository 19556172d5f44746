"""Scoring many image files with a loaded model: batches, a progress bar, per-file errors."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from tlpipe.serving.pyfunc import IMAGE_COLUMN

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
