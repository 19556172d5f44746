"""Small images the tests make themselves: valid oddities and broken files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def photo(seed: int, size: tuple[int, int] = (96, 64)) -> Image.Image:
    """A distinct RGB image per seed (so content hashes differ)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def write_class_folder(root: Path, label: str, count: int, start: int = 0) -> list[Path]:
    (root / label).mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(start, start + count):
        path = root / label / f"{label}_{index}.png"
        photo(hash((label, index)) % 2**32).save(path)
        paths.append(path)
    return paths


def truncated_jpeg(path: Path) -> Path:
    buffer = io.BytesIO()
    photo(1, (200, 200)).save(buffer, format="JPEG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


def decompression_bomb(path: Path, side: int = 20_000) -> Path:
    """A 1-bit PNG of side x side pixels: tiny on disk, huge once decoded to RGB."""
    Image.new("1", (side, side)).save(path, format="PNG", optimize=True)
    return path


def odd_but_valid(directory: Path) -> dict[str, Path]:
    """One file per mode the pipeline must convert to RGB consistently."""
    directory.mkdir(parents=True, exist_ok=True)
    base = photo(7)
    files = {}

    def save(name: str, image: Image.Image, **options) -> None:
        files[name] = directory / name
        image.save(files[name], **options)

    save("grey.png", base.convert("L"))
    save("cmyk.jpg", base.convert("CMYK"), format="JPEG")
    save("palette.png", base.convert("P"))
    rgba = base.convert("RGBA")
    rgba.putalpha(128)
    save("alpha.png", rgba)
    sixteen = (np.asarray(base.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    save("sixteen.png", Image.fromarray(sixteen))  # uint16 array: mode I;16
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    save("rotated.jpg", base, format="JPEG", exif=exif.tobytes())
    return files
