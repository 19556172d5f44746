"""Thumbnails for the HTML reports (validation, audit): small JPEGs inline as data: URIs, so a
report is one file that opens anywhere.

Not in ``tlpipe.images``: that module is part of the feature-vector code digest, and a change
to report markup must not invalidate every stored vector.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from tlpipe.images import thumbnail_jpeg


def thumbnail_img(file: Path, alt: str) -> str:
    """An ``<img>`` of ``file`` made small; raises what reading or decoding it raises (a file
    changed or gone since it was scanned), for the caller to show instead."""
    data = base64.b64encode(thumbnail_jpeg(file.read_bytes())).decode()
    return f'<img src="data:image/jpeg;base64,{data}" alt="{html.escape(alt)}">'
