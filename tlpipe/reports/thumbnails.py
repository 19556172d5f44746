"""Thumbnails for the HTML reports (validation, audit): small JPEGs inline as data: URIs, so a
report is one file that opens anywhere."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from PIL import Image

from tlpipe.vectors.images import to_rgb


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
