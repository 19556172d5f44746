"""Thumbnails for the HTML reports (validation, audit): small JPEGs inline as data: URIs, so a
report is one file that opens anywhere."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from PIL import Image

from tlpipe.vectors.images import to_rgb

# The look the report pages share: tables, and a grid of figures around thumbnails.
BASE_CSS = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#222}
table{border-collapse:collapse;margin:1rem 0}
td,th{border:1px solid #ccc;padding:.3rem .6rem;text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:.75rem}
"""


def thumbnail_jpeg(data: bytes, side: int = 128) -> bytes:
    """A small RGB JPEG of an image for reports. Only for data ``data.image_facts`` found
    decodable: there is no pixel guard here."""
    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (side, side))  # JPEGs then decode at 1/2..1/8 scale
        rgb = to_rgb(image)
        rgb.thumbnail((side, side))
        buffer = io.BytesIO()
        rgb.save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


def thumbnail_img(file: Path, alt: str) -> str:
    """An ``<img>`` of ``file`` made small; raises what reading or decoding it raises (a file
    changed or gone since it was scanned), for the caller to show instead."""
    data = base64.b64encode(thumbnail_jpeg(file.read_bytes())).decode()
    return f'<img src="data:image/jpeg;base64,{data}" alt="{html.escape(alt)}">'
