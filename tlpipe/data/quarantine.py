"""The images the audit left out of training, and the rows that remain without them."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd


class AuditMissing(FileNotFoundError):
    pass


def quarantined_paths(quarantine_file: Path) -> set[str]:
    if not quarantine_file.is_file():
        raise AuditMissing(f"{quarantine_file} not found: the audit stage writes it, and "
                           "training reads only audited data; run the audit stage first")
    return {entry["path"] for entry in json.loads(quarantine_file.read_text())}


def without_quarantined(rows: pd.DataFrame, quarantine_file: Path) -> pd.DataFrame:
    """``rows`` (with a ``path`` column) less every image the audit quarantined."""
    return rows[~rows["path"].isin(quarantined_paths(quarantine_file))]
