"""Head training on cached features against the classic fixed-feature-extractor loop.

The classic loop (PyTorch's transfer-learning tutorial, "ConvNet as fixed feature extractor")
re-runs the frozen backbone on freshly augmented images every epoch. The cached approach runs
the backbone once per cached view, then trains the head on stored features. Both train the
same head for the same number of epochs; accuracy is on the held-out test split.

    .venv/bin/python bench/head_training.py [--epochs N]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from common import DEMO, demo_manifest
from torch.nn import functional

from tlpipe.devices import CPU
from tlpipe.stages.features import feature_spec
from tlpipe.training.head_kinds import train_head
from tlpipe.training.heads import HeadSpec, build_head
from tlpipe.vectors.augment import train_decode_side, train_transform
from tlpipe.vectors.backbones import load_backbone
from tlpipe.vectors.engines import torch_forward
from tlpipe.vectors.features import extract_features, plan_views
from tlpipe.vectors.preprocess import ImageFolderRows, iterate_batches
from tlpipe.vectors.store import FeatureStore, load_split


def classic_loop(backbone, manifest, classes, params, epochs: int) -> tuple[float, float]:
    """Frozen backbone forward on augmented images each epoch, head updated per batch."""
    torch.manual_seed(params.seed)
    train = manifest[manifest["split"] == "train"]
    labels = [classes.index(label) for label in train["label"]]
    dataset = ImageFolderRows(DEMO, train["path"].tolist(),
                              train_transform(backbone.preprocessing, params.augment),
                              train_decode_side(backbone.preprocessing, params.augment),
                              labels=labels)
    head = build_head(HeadSpec("linear", backbone.num_features, len(classes),
                               dropout=params.head.dropout))
    optimizer = torch.optim.AdamW(head.parameters(), lr=params.head.lr,
                                  weight_decay=params.head.weight_decay)
    forward = torch_forward(backbone, params.features.precision, params.features.channels_last)
    start = time.perf_counter()
    for epoch in range(epochs):
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(epoch))
        head.train()
        for images, targets in iterate_batches(dataset, params.features.batch_size,
                                               params.features.num_workers, order.tolist()):
            features = torch.from_numpy(forward(images))
            loss = functional.cross_entropy(head(features), targets,
                                            label_smoothing=params.head.label_smoothing)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    seconds = time.perf_counter() - start
    return seconds, test_accuracy(backbone, head, manifest, classes, params)


def test_accuracy(backbone, head, manifest, classes, params) -> float:
    test = manifest[manifest["split"] == "test"]
    dataset = ImageFolderRows.for_evaluation(DEMO, test["path"].tolist(), backbone.preprocessing,
                                             [classes.index(label) for label in test["label"]])
    head.eval()
    forward = torch_forward(backbone, params.features.precision, params.features.channels_last)
    correct = 0
    with torch.no_grad():
        for images, targets in iterate_batches(dataset, 64, 1):
            logits = head(torch.from_numpy(forward(images)))
            correct += (logits.argmax(1) == targets).sum().item()
    return correct / len(dataset)


def cached(backbone, manifest, classes, params, epochs: int) -> tuple[float, float, float]:
    head_config = params.head.model_copy(update={"epochs": epochs, "patience": epochs})
    plan = plan_views(manifest, params.features.views, feature_spec(params, backbone))
    with tempfile.TemporaryDirectory() as directory:
        cache = FeatureStore(directory)
        start = time.perf_counter()
        extract_features(plan, DEMO, backbone, params.features, params.augment, params.seed,
                         cache, CPU)
        extracted = time.perf_counter()
        head, _ = train_head(*load_split(plan, cache, "train", classes),
                             *load_split(plan, cache, "val", classes),
                             HeadSpec("linear", backbone.num_features, len(classes),
                                      dropout=head_config.dropout),
                             head_config, params.seed)
        done = time.perf_counter()
        test_x, test_y = load_split(plan, cache, "test", classes)
    with torch.no_grad():
        accuracy = (head(test_x).argmax(1) == test_y).float().mean().item()
    return done - start, done - extracted, accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    manifest, params = demo_manifest()
    classes = sorted(manifest["label"].unique())
    backbone = load_backbone()
    backbone.model.to(memory_format=torch.channels_last)
    cold, warm, cached_accuracy = cached(backbone, manifest, classes, params, args.epochs)
    classic_seconds, classic_accuracy = classic_loop(backbone, manifest, classes, params,
                                                     args.epochs)
    print(f"epochs: {args.epochs}  train images: {(manifest['split'] == 'train').sum()}  "
          f"cached views per image: {params.features.views}")
    print(f"classic loop (backbone every epoch): {classic_seconds:8.2f} s   "
          f"test accuracy {classic_accuracy:.4f}")
    print(f"cached, incl. one-time extraction:   {cold:8.2f} s   "
          f"test accuracy {cached_accuracy:.4f}")
    print(f"cached, head training only:          {warm:8.2f} s")
    print(f"time ratio classic/cached (cold):    {classic_seconds / cold:8.1f}x")
    print(f"time ratio classic/cached (warm):    {classic_seconds / warm:8.1f}x")


if __name__ == "__main__":
    main()
