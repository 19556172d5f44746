"""The training augmentation policy (torchvision transforms v2) and its preview grid."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.transforms import InterpolationMode, v2

from tlpipe.backbones import Preprocessing
from tlpipe.config import AugmentConfig
from tlpipe.fsio import write_atomic
from tlpipe.images import load_rgb
from tlpipe.preprocess import denormalise, eval_transform, interpolation, to_normalised


def train_transform(preprocessing: Preprocessing, augment: AugmentConfig) -> v2.Compose:
    steps: list = [
        v2.RandomResizedCrop(preprocessing.input_size, scale=tuple(augment.crop_scale),
                             interpolation=interpolation(preprocessing), antialias=True),
        v2.RandomHorizontalFlip(augment.horizontal_flip),
        v2.ToImage(),
    ]
    if augment.trivial_augment:
        # Its rotations and shears support only nearest/bilinear on tensors.
        steps.append(v2.TrivialAugmentWide(interpolation=InterpolationMode.BILINEAR))
    if augment.color_jitter > 0:
        jitter = augment.color_jitter
        steps.append(v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter))
    return v2.Compose(steps + to_normalised(preprocessing))


def train_decode_side(preprocessing: Preprocessing, augment: AugmentConfig) -> int:
    """The shorter side an image needs for the smallest random crop (``crop_scale``'s lower
    end, at the narrowest aspect ratio 3/4) to still cover the input at full resolution."""
    return math.ceil(preprocessing.input_size / math.sqrt(augment.crop_scale[0] * 3 / 4))


def view_seed(sha256: str, view: int, seed: int) -> int:
    """The augmentation seed of one cached view: the same image and view always look the same."""
    return (int(sha256[:15], 16) ^ (view * 0x9E3779B1) ^ seed) % (2**63)


def preview_titles(views: int) -> list[str]:
    """The preview's column titles. The first column is the evaluation view: what the model
    sees of the image when it is evaluated (no augmentation)."""
    return ["original", *(f"view {view}" for view in range(1, views + 1))]


def preview_row_label(path: str) -> str:
    """A row's label: its class and a short file name (the layout is <split>/<class>/<file>)."""
    file = Path(path)
    return f"{file.parent.name}\n{file.stem[:12]}"


def _label_grid(grid: Image.Image, titles: list[str], rows: list[str], tile: tuple[int, int],
                padding: int) -> Image.Image:
    """The grid with a header band of column titles and a left band of row labels."""
    font = ImageFont.load_default(size=14)
    measure = ImageDraw.Draw(grid)
    boxes = [measure.multiline_textbbox((0, 0), text, font=font) for text in titles + rows]
    left = max(box[2] for box in boxes[len(titles):]) + 2 * padding
    top = max(box[3] for box in boxes[:len(titles)]) + 2 * padding
    canvas = Image.new("RGB", (grid.width + left, grid.height + top), "white")
    canvas.paste(grid, (left, top))
    draw = ImageDraw.Draw(canvas)
    height, width = tile
    for column, title in enumerate(titles):  # centred over its tile, in the band
        x = left + padding + column * (width + padding) + width // 2
        draw.text((x, top // 2), title, fill="black", font=font, anchor="mm")
    for row, label in enumerate(rows):  # right-aligned, level with its row's middle
        y = top + padding + row * (height + padding) + height // 2
        draw.multiline_text((left - padding, y), label, fill="black", font=font, anchor="rm",
                            align="right")
    return canvas


def save_augmentation_preview(root: Path, paths: list[str], preprocessing: Preprocessing,
                              augment: AugmentConfig, seed: int, target: Path,
                              views_per_image: int = 4) -> Path:
    """A grid: each row is one training image (labelled with its class and file), its first
    column the evaluation view ("original"), then "view 1".. its augmented views."""
    from torchvision.utils import make_grid

    plain, augmented = eval_transform(preprocessing), train_transform(preprocessing, augment)
    tiles = []
    for path in paths:
        image = load_rgb(Path(root) / path)
        tiles.append(plain(image))
        for view in range(views_per_image):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed + view)
                tiles.append(augmented(image))
    padding = 4
    grid = make_grid(denormalise(torch.stack(tiles), preprocessing),
                     nrow=views_per_image + 1, padding=padding, pad_value=1.0)
    array = (grid.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    labelled = _label_grid(Image.fromarray(array), preview_titles(views_per_image),
                           [preview_row_label(path) for path in paths],
                           tuple(tiles[0].shape[-2:]), padding)
    return write_atomic(target, lambda tmp: labelled.save(tmp, format="PNG"))
