"""The augmentation preview: a labelled grid of training images and their augmented views."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from tlpipe.config import AugmentConfig
from tlpipe.fsio import write_atomic
from tlpipe.vectors.augment import train_transform
from tlpipe.vectors.backbones import Preprocessing
from tlpipe.vectors.images import load_rgb
from tlpipe.vectors.preprocess import eval_transform


def denormalise(batch: torch.Tensor, preprocessing: Preprocessing) -> torch.Tensor:
    mean = torch.tensor(preprocessing.mean).view(-1, 3, 1, 1)
    std = torch.tensor(preprocessing.std).view(-1, 3, 1, 1)
    return (batch * std + mean).clamp(0, 1)


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


def save_text_augmentation_preview(rows: list[tuple[str, str, str]], token_dropout: float,
                                   seed: int, target: Path, views: int) -> Path:
    """The text path's preview: for each (path, sha256, text), the text and ``views`` of its
    augmented views, one block each, wrapped, as a PNG like the image grid."""
    import textwrap

    from tlpipe.vectors.text_augment import augmented_text

    font = ImageFont.load_default(size=13)
    width, line_height, chars = 1100, 17, 140
    blocks: list[tuple[str, list[str]]] = []
    for path, sha256, text in rows:
        for title, view_text in zip(preview_titles(views), [text, *(
                augmented_text(text, sha256, view, seed, token_dropout)
                for view in range(1, views + 1))], strict=True):
            lines = textwrap.wrap(" ".join(view_text.split()), chars)[:4] or [""]
            label = preview_row_label(path).replace("\n", " / ")
            blocks.append((f"{label}: {title}" if title == "original"
                           else f"    {title}", lines))
    height = 10 + sum((len(lines) + 1) * line_height + 4 for _, lines in blocks)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    y = 5
    for title, lines in blocks:
        draw.text((8, y), title, fill=(30, 30, 140), font=font)
        y += line_height
        for line in lines:
            draw.text((24, y), line, fill="black", font=font)
            y += line_height
        y += 4
    return write_atomic(target, lambda path: canvas.save(path, format="PNG"))
