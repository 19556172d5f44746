"""What an image file is, read safely: format, size, mode, and whether it decodes.

Sizes are read from the header first, so that a decompression bomb is never decoded in full.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from tlpipe.vectors.images import to_rgb


@dataclass(frozen=True)
class ImageInfo:
    format: str | None
    width: int | None
    height: int | None
    mode: str | None
    decodable: bool
    error: str | None


def inspect_image(data: bytes, max_pixels: int) -> ImageInfo:
    """Header facts plus a full decode, unless the header announces more than ``max_pixels``."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            fmt, (width, height), mode = image.format, image.size, image.mode
            if width * height > max_pixels:
                return ImageInfo(fmt, width, height, mode, False,
                                 f"{width}x{height} exceeds {max_pixels} pixels; not decoded")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                image.load()
                to_rgb(image)
            return ImageInfo(fmt, width, height, mode, True, None)
    except Exception as error:  # any decoder failure means "not decodable", with its reason
        return ImageInfo(None, None, None, None, False, _decode_error(data, error))


def _decode_error(data: bytes, error: Exception) -> str:
    """Why a file does not decode, in words: PIL's own message names the in-memory buffer
    (``<_io.BytesIO object at 0x...>``), which tells the reader nothing and changes every run."""
    if not data:
        return "empty file (0 bytes)"
    if isinstance(error, UnidentifiedImageError):
        return "not an image (PIL cannot identify it)"
    if "truncated" in str(error):
        return "truncated image: the file ends before its image data does"
    return f"cannot be decoded: {type(error).__name__}: {error}"
