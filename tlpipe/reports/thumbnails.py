"""Thumbnails for the HTML reports (validation, audit): small JPEGs inline as data: URIs, so a
report is one file that opens anywhere."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping
from pathlib import Path

from PIL import Image

from tlpipe.vectors.images import to_rgb

# The look the report pages share: tables, and a grid of figures around thumbnails.
BASE_CSS = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#222}
table{border-collapse:collapse;margin:1rem 0}
td,th{border:1px solid #ccc;padding:.3rem .6rem;text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:.75rem}
.text{max-width:20rem;max-height:12rem;overflow:auto;white-space:pre-wrap;font-size:.85rem;
background:#f6f6f6;border-left:3px solid #bbb;padding:.4rem .6rem;margin:0}
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


# What a report's paths are read from: the data folder (images), or each text by its path.
Source = Path | Mapping[str, str]
TEXT_SHOWN_CHARS = 600


def items_word(source: Source) -> str:
    """What a report calls the files it shows: "texts" or "images"."""
    return "texts" if isinstance(source, Mapping) else "images"


def picture_html(source: Source, path: str) -> str:
    """How a report shows one file: a thumbnail of the image under the data folder, or the
    text itself, escaped and cut to ``TEXT_SHOWN_CHARS``; raises ValueError or OSError for a
    file that cannot be shown, for the caller to say so instead."""
    if isinstance(source, Mapping):
        text = source.get(path)
        if text is None:
            raise ValueError(f"no text for {path}")
        clipped = text if len(text) <= TEXT_SHOWN_CHARS else text[:TEXT_SHOWN_CHARS] + " ..."
        return f'<blockquote class="text">{html.escape(clipped)}</blockquote>'
    return thumbnail_img(Path(source) / path, path)
