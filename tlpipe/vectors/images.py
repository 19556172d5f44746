"""Decoding images as the model sees them.

Every image reaches the model as 8-bit RGB with its EXIF orientation applied, whatever its
stored mode (greyscale, CMYK, palette, 16-bit, alpha). Reading an image's facts without
decoding it in full (the decompression-bomb guard) is ``tlpipe.data.image_facts``.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# The header check in data.image_facts is our bomb guard; PIL's own limit would raise before
# we can report.
Image.MAX_IMAGE_PIXELS = None

_BACKGROUND = (255, 255, 255)


class ImageTooLarge(ValueError):
    """An image whose header announces more pixels than the limit: never decoded."""


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


def load_rgb(path: str | Path, min_side: int | None = None,
             max_pixels: int | None = None) -> Image.Image:
    """The image as RGB. With ``min_side``, a JPEG decodes at the smallest of 1/8, 1/4, 1/2
    or full scale whose shorter side is still ``min_side`` or more: a 12-megapixel photo
    decodes several times faster, with the pixels the model sees changed only slightly
    (the decoder's scaling is another filter, so the setting is part of every cache key).
    With ``max_pixels``, an image that would decode to more pixels raises ``ImageTooLarge``
    before it is decoded (the decompression-bomb guard of serving)."""
    with Image.open(path) as image:
        return _decoded(image, min_side, max_pixels)


def decode_rgb(data: bytes, min_side: int | None = None,
               max_pixels: int | None = None) -> Image.Image:
    """``load_rgb`` for encoded bytes."""
    with Image.open(io.BytesIO(data)) as image:
        return _decoded(image, min_side, max_pixels)


def _decoded(image: Image.Image, min_side: int | None, max_pixels: int | None) -> Image.Image:
    if min_side is not None:
        image.draft(None, (min_side, min_side))  # a no-op for all but JPEG
    width, height = image.size  # after draft: what will really be decoded
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLarge(f"{width}x{height} = {width * height} pixels, more than the "
                            f"limit of {max_pixels}; not decoded")
    image.load()
    return to_rgb(image)
