"""Small images the tests make themselves: valid oddities and broken files."""

from __future__ import annotations

import io
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def stable_seed(*parts: object) -> int:
    """The same images in every test process (``hash`` of a str changes with each process,
    and with it which split each image's content hash lands in)."""
    return zlib.crc32("/".join(map(str, parts)).encode())


def photo(seed: int, size: tuple[int, int] = (96, 64)) -> Image.Image:
    """A distinct RGB image per seed (so content hashes differ)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def write_class_folder(root: Path, label: str, count: int, start: int = 0) -> list[Path]:
    (root / label).mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(start, start + count):
        path = root / label / f"{label}_{index}.png"
        photo(stable_seed(label, index)).save(path)
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


SHAPES = ("disc", "square", "stripes")


def shape(kind: str, seed: int, size: tuple[int, int] = (80, 56)) -> Image.Image:
    """A greyscale, non-square picture of one shape at a random place and scale, on noise:
    far from ImageNet photos, and a class only the shape tells apart."""
    rng = np.random.default_rng(seed)
    width, height = size
    ys, xs = np.mgrid[0:height, 0:width]
    cx, cy = rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height
    radius = rng.uniform(0.15, 0.3) * min(size)
    if kind == "disc":
        mask = (xs - cx) ** 2 + (ys - cy) ** 2 < radius ** 2
    elif kind == "square":
        mask = (abs(xs - cx) < radius) & (abs(ys - cy) < radius)
    else:
        mask = ((xs + ys * rng.uniform(-1, 1)) // max(2, int(radius / 3))) % 2 == 0
    pixels = rng.normal(110, 25, (height, width)) + 100 * mask
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "L")


def write_shapes(root: Path, per_class: int, kinds: tuple[str, ...] = SHAPES) -> Path:
    """Class folders of PNG (and some JPEG) shape pictures of varied sizes."""
    for kind in kinds:
        (root / kind).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            size = (64 + 8 * (index % 5), 48 + 12 * (index % 3))
            image = shape(kind, stable_seed(kind, index), size)
            image.save(root / kind / f"{kind}_{index}.{'jpg' if index % 4 == 0 else 'png'}")
    return root


def write_digits(root: Path, per_class: int, side: int = 28) -> Path:
    """scikit-learn's 8x8 handwritten digits, upscaled to ``side`` px greyscale PNGs in class
    folders ``digit_0`` .. ``digit_9``: data as far from ImageNet photos as it gets."""
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    counts: dict[int, int] = {}
    for pixels, label in zip(images, labels, strict=True):
        if counts.get(label, 0) >= per_class:
            continue
        counts[label] = counts.get(label, 0) + 1
        folder = root / f"digit_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray((pixels.reshape(8, 8) * 255 / 16).astype(np.uint8), "L")
        image.resize((side, side), Image.Resampling.BICUBIC).save(folder / f"{counts[label]}.png")
    return root
