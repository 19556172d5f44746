"""What the backbone sees: its own preprocessing, and images loaded by path in batches.

Evaluation, feature extraction, fine-tuning and serving all read images through here; the
training augmentation policy is in ``tlpipe.vectors.augment``.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode, v2

from tlpipe.vectors.backbones import Preprocessing
from tlpipe.vectors.images import load_rgb


def interpolation(preprocessing: Preprocessing) -> InterpolationMode:
    return InterpolationMode(preprocessing.interpolation)


def to_normalised(preprocessing: Preprocessing) -> list:
    return [v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(preprocessing.mean), std=list(preprocessing.std))]


def eval_transform(preprocessing: Preprocessing) -> v2.Compose:
    """What the backbone sees at evaluation: the image fitted to its input, normalised."""
    # Resizing the PIL image (before ToImage) uses Pillow's SIMD resampling: several times
    # cheaper than resizing the tensor, which matters when decoding shares 2 cores with the model.
    size = preprocessing.input_size
    fit = ([v2.Resize((size, size), interpolation=interpolation(preprocessing), antialias=True)]
           if preprocessing.resize == "resize" else
           [v2.Resize(preprocessing.resize_size, interpolation=interpolation(preprocessing),
                      antialias=True), v2.CenterCrop(size)])
    return v2.Compose([*fit, v2.ToImage(), *to_normalised(preprocessing)])


def eval_decode_side(preprocessing: Preprocessing) -> int:
    """The shorter side an image needs for ``eval_transform`` to lose nothing: the resize
    target (crop), or the input size (resize squeezes both sides to it)."""
    return preprocessing.resize_size if preprocessing.resize == "crop" else preprocessing.input_size


# torch's RNG is process-wide: seeded transforms in loader threads take turns, and save and
# restore the global state around their draws. Code that draws from the global RNG itself
# (dropout in training) while such threads run holds this lock too, so no draw of its own is
# ever rewound.
GLOBAL_RNG = threading.Lock()


class ImageFolderRows(Dataset):
    """Images listed by path, decoded at no less than ``min_side`` (``images.load_rgb``),
    each optionally transformed under its own fixed seed."""

    def __init__(self, root: Path, paths: list[str], transform: v2.Compose, min_side: int,
                 seeds: list[int | None] | None = None, labels: list[int] | None = None):
        self.root, self.paths, self.transform = Path(root), paths, transform
        self.min_side = min_side
        self.seeds = seeds or [None] * len(paths)
        self.labels = labels

    @classmethod
    def for_evaluation(cls, root: Path, paths: list[str], preprocessing: Preprocessing,
                       labels: list[int] | None = None) -> ImageFolderRows:
        """The images as evaluation, the plain cached view and serving see them."""
        return cls(root, paths, eval_transform(preprocessing), eval_decode_side(preprocessing),
                   labels=labels)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = load_rgb(self.root / self.paths[index], self.min_side)
        seed = self.seeds[index]
        if seed is None:
            tensor = self.transform(image)
        else:
            # A private RNG stream per item keeps cached views reproducible whatever the
            # batching or worker count, without disturbing the caller's RNG.
            with GLOBAL_RNG, torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                tensor = self.transform(image)
        return tensor, (self.labels[index] if self.labels is not None else index)


def iterate_batches(dataset: Dataset, batch_size: int, workers: int = 0,
                    order: Sequence[int] | None = None, pin_memory: bool = False,
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of (images, labels or indices), decoded by ``workers`` threads ahead of use;
    with ``pin_memory`` the images are in page-locked memory, ready to copy to a GPU while
    it computes.

    Threads, not DataLoader worker processes: decoding and resizing release the GIL, and
    forked workers die inside Prefect's process. With ``workers=0`` everything runs inline,
    which keeps the caller's RNG use (dropout) deterministic.
    """
    order = list(range(len(dataset))) if order is None else list(order)
    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]

    def load(chunk: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        items = [dataset[i] for i in chunk]
        images = torch.stack([image for image, _ in items])
        return (images.pin_memory() if pin_memory else images,
                torch.tensor([target for _, target in items]))

    if workers == 0:
        yield from map(load, chunks)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque = deque()
        for chunk in chunks:
            pending.append(pool.submit(load, chunk))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
