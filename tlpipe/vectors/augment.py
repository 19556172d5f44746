"""The training augmentation policy (torchvision transforms v2): the augmented views of an image.

Its preview grid, for people, is ``tlpipe.reports.augment_preview``.
"""

from __future__ import annotations

import math

from torchvision.transforms import InterpolationMode, v2

from tlpipe.config import AugmentConfig
from tlpipe.vectors.backbones import Preprocessing
from tlpipe.vectors.preprocess import interpolation, to_normalised


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
