"""Reading images safely and consistently.

Every image reaches the model as 8-bit RGB with its EXIF orientation applied, whatever its
stored mode (greyscale, CMYK, palette, 16-bit, alpha). Sizes are read from the header first so
that a decompression bomb is never decoded in full.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# The header check below is our bomb guard; PIL's own limit would raise before we can report.
Image.MAX_IMAGE_PIXELS = None

_BACKGROUND = (255, 255, 255)


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


def thumbnail_jpeg(data: bytes, side: int = 128) -> bytes:
    """A small RGB JPEG of an image for reports. Only for data ``inspect_image`` found
    decodable: there is no pixel guard here."""
    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (side, side))  # JPEGs then decode at 1/2..1/8 scale
        rgb = to_rgb(image)
        rgb.thumbnail((side, side))
        buffer = io.BytesIO()
        rgb.save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB the same way every time."""
    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}:
        array = np.asarray(image, dtype=np.float64)
        # 16-bit data spans 0..65535; scaling by the type's range (not the image's max)
        # keeps brightness comparable between images.
        scale = 65535.0 if mode.startswith("I;16") else max(float(array.max()), 1.0)
        grey = np.clip(array / scale * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in {"RGBA", "LA", "PA", "RGBa", "La"}:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, _BACKGROUND)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")


def load_rgb(path: str | Path, min_side: int | None = None) -> Image.Image:
    """The image as RGB. With ``min_side``, a JPEG decodes at the smallest of 1/8, 1/4, 1/2
    or full scale whose shorter side is still ``min_side`` or more: a 12-megapixel photo
    decodes several times faster, with the pixels the model sees changed only slightly
    (the decoder's scaling is another filter, so the setting is part of every cache key)."""
    with Image.open(path) as image:
        return _decoded(image, min_side)


def decode_rgb(data: bytes, min_side: int | None = None) -> Image.Image:
    """``load_rgb`` for encoded bytes."""
    with Image.open(io.BytesIO(data)) as image:
        return _decoded(image, min_side)


def _decoded(image: Image.Image, min_side: int | None) -> Image.Image:
    if min_side is not None:
        image.draft(None, (min_side, min_side))  # a no-op for all but JPEG
    image.load()
    return to_rgb(image)


def array_to_rgb(values: object) -> Image.Image:
    """A uint8 array (or nested lists from JSON) of shape HxW, HxWx1, HxWx3 or HxWx4."""
    array = np.asarray(values)
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.integer) or array.min() < 0 or array.max() > 255:
            raise ValueError(f"image arrays must hold uint8 values 0..255, got {array.dtype}")
        array = array.astype(np.uint8)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4)):
        return to_rgb(Image.fromarray(array))
    raise ValueError(f"image arrays must be HxW, HxWx1, HxWx3 or HxWx4, got shape {array.shape}")
