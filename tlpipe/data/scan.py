"""A data folder, or a table of texts, to its manifest, whatever it holds: images
(``manifest``) or texts (``text_manifest``), as ``data.modality`` says or the files show."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tlpipe.config import DataConfig, Params, SplitConfig, TextConfig
from tlpipe.data import text_manifest
from tlpipe.data.manifest import IMAGE_SUFFIXES, build_manifest, detect_layout, list_files
from tlpipe.data.text_facts import modality_of
from tlpipe.data.validation import ValidationReport, validate_manifest


def scan(root: Path, data: DataConfig, split: SplitConfig, max_pixels: int, text: TextConfig,
         state_dir: Path | None = None) -> pd.DataFrame:
    """The manifest of ``root``; ``df.attrs["modality"]`` is "text" for texts."""
    root = Path(root)
    if text_manifest.is_table(root):
        return text_manifest.table_manifest(root, data, split, text)
    layout = detect_layout(root, data)
    files = list_files(root, layout, data)
    if modality_of_files(files["path"], data) == "text":
        return text_manifest.files_manifest(root, files, layout, split, text)
    return build_manifest(root, data, split, max_pixels, state_dir=state_dir, files=files)


def modality_of_files(paths: pd.Series, data: DataConfig) -> str:
    """``data.modality``, or what the files are when it is auto (a folder of both fails)."""
    if data.modality != "auto":
        return data.modality
    return modality_of(paths.tolist(), IMAGE_SUFFIXES)


def check_folder(root: Path, params: Params) -> tuple[ValidationReport, pd.DataFrame]:
    """The gate on a data folder as it is now, in memory: scan it, then validate the scan.
    Returns the report and the rows kept; nothing is written."""
    manifest = scan(root, params.data, params.split, params.validation.max_pixels, params.text)
    return validate_manifest(manifest, params.validation, params.data.expected_classes,
                             params.text)
