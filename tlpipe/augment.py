"""The training augmentation policy (torchvision transforms v2) and its preview grid."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
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


def view_seed(sha256: str, view: int, seed: int) -> int:
    """The augmentation seed of one cached view: the same image and view always look the same."""
    return (int(sha256[:15], 16) ^ (view * 0x9E3779B1) ^ seed) % (2**63)


def save_augmentation_preview(root: Path, paths: list[str], preprocessing: Preprocessing,
                              augment: AugmentConfig, seed: int, target: Path,
                              views_per_image: int = 4) -> Path:
    """A grid: each row is one training image, its first column the plain view."""
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
    grid = make_grid(denormalise(torch.stack(tiles), preprocessing),
                     nrow=views_per_image + 1, padding=4, pad_value=1.0)
    array = (grid.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    return write_atomic(target, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))
