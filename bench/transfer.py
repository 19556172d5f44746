"""Transfer from ImageNet to data near and far from it: tlpipe's default run against baselines.

For each dataset, on one split (tlpipe's own, by content hash; the test split chooses nothing),
in the same run:

- tlpipe: its stages with the default settings (the model ``tlpipe run`` would register);
- a logistic regression on raw pixels (32x32 grey, C by 5-fold CV on train + val);
- a logistic probe on the backbone's features (plain view of every image, C as above);
- a fastai-style full fine-tune of the same backbone (``fine_tune``: one epoch training a new
  head on the frozen backbone, then every layer with discriminative learning rates, from
  ``lr/100`` at the input to ``lr`` at the head, one-cycle, BatchNorm statistics updated),
  within the same minutes as tlpipe's ``finetune.budget_minutes``.

Datasets: the ants/bees demo as shipped (near ImageNet); scikit-learn's digits (8x8 greyscale,
10 classes, upsampled; far); generated greyscale shapes (not photographs); and a few-shot demo
(10 training images per class); on request, 2,000 generated shapes of two kinds.

    .venv/bin/python bench/transfer.py [--datasets demo,digits,shapes,fewshot] [--set KEY=VALUE]
    .venv/bin/python bench/transfer.py --datasets shapes2000 --no-baselines
"""

from __future__ import annotations

import argparse
import copy
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from common import DEMO
from sklearn.linear_model import LogisticRegressionCV
from sklearn.metrics import accuracy_score, f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.nn import functional
from tqdm.auto import tqdm

from tests.images import write_digits, write_shapes
from tlpipe.data.manifest import load_manifest
from tlpipe.devices import resolve_device
from tlpipe.params_file import deep_merge, overrides_from, parse_params
from tlpipe.paths import outputs_for
from tlpipe.stages import audit, evaluate, features, finetune, head, manifest, validate
from tlpipe.stages.features import feature_spec
from tlpipe.training.heads import class_order
from tlpipe.vectors.backbones import backbone_for
from tlpipe.vectors.features import extract_features, plan_views
from tlpipe.vectors.images import load_rgb
from tlpipe.vectors.preprocess import ImageFolderRows, iterate_batches
from tlpipe.vectors.store import FeatureStore, load_split


class Row(NamedTuple):
    model: str
    accuracy: float
    macro_f1: float
    seconds: float


def demo(root: Path) -> Path:
    """The demo as shipped: its val/ (153 images) is the test split, validation is carved from
    train/."""
    shutil.copytree(DEMO, root)
    return root


def fewshot(root: Path, per_class: int = 10) -> Path:
    """10 training images per class; the demo's own val/ (153 images) is the test split."""
    for class_dir in sorted((DEMO / "train").iterdir()):
        target = root / "train" / class_dir.name
        target.mkdir(parents=True)
        for image in sorted(class_dir.glob("*.jpg"))[:per_class]:
            shutil.copy2(image, target / image.name)
    shutil.copytree(DEMO / "val", root / "val")
    return root


DATASETS = {"demo": demo, "digits": lambda root: write_digits(root, per_class=40, side=64),
            "shapes": lambda root: write_shapes(root, per_class=40), "fewshot": fewshot,
            # Not in the default run: the 25-minute end-to-end check at 2,000 images.
            "shapes2000": lambda root: write_shapes(root, per_class=1000,
                                                    kinds=("disc", "square"))}
DEFAULT_DATASETS = "demo,digits,shapes,fewshot"


def scores(truth, predicted) -> tuple[float, float]:
    return (accuracy_score(truth, predicted),
            f1_score(truth, predicted, average="macro", zero_division=0))


def probe(train_x, train_y, test_x, seed: int):
    model = make_pipeline(StandardScaler(), LogisticRegressionCV(
        Cs=np.logspace(-4, 1, 11), cv=5, max_iter=3000, random_state=seed))
    return model.fit(train_x, train_y).predict(test_x)


def pixel_probe(params, frame: pd.DataFrame, seed: int) -> Row:
    start = time.perf_counter()
    fit, test = frame[frame["split"] != "test"], frame[frame["split"] == "test"]

    def pixels(part):
        return np.stack([np.asarray(load_rgb(params.data.root / path).convert("L").resize(
            (32, 32)), dtype=np.float32).ravel() / 255 for path in part["path"]])
    predicted = probe(pixels(fit), fit["label"], pixels(test), seed)
    return Row("logistic on raw pixels (32x32 grey)", *scores(test["label"], predicted),
               time.perf_counter() - start)


def feature_probe(params, project: Path, frame: pd.DataFrame, classes: list[str]) -> Row:
    start = time.perf_counter()
    backbone = backbone_for(params.backbone, project)
    plan = plan_views(frame.assign(split=frame["split"].where(frame["split"] == "test", "fit")),
                      1, feature_spec(params, backbone))
    cache = FeatureStore(str(project / ".cache" / "features"))
    extract_features(plan, params.data.root, backbone, params.features, params.augment,
                     params.seed, cache, resolve_device(params.device))
    (fit_x, fit_y), (test_x, test_y) = (load_split(plan, cache, split, classes)
                                        for split in ("fit", "test"))
    predicted = probe(fit_x.numpy(), fit_y.numpy(), test_x.numpy(), params.seed)
    return Row("logistic on the backbone's features", *scores(test_y.numpy(), predicted),
               time.perf_counter() - start)


def fastai_fine_tune(params, project: Path, frame: pd.DataFrame, classes: list[str],
                     epochs: int, lr: float) -> Row:
    """fastai's ``fine_tune(epochs, base_lr)`` on the training split, in plain PyTorch."""
    start = time.perf_counter()
    torch.manual_seed(params.seed)
    device = resolve_device(params.device)
    backbone = backbone_for(params.backbone, project)
    body = copy.deepcopy(backbone.model).to(device)
    head = nn.Linear(backbone.num_features, len(classes)).to(device)
    model = nn.Sequential(body, head)
    train, test = frame[frame["split"] == "train"], frame[frame["split"] == "test"]
    rows = ImageFolderRows.for_evaluation(params.data.root, list(train["path"]),
                                          backbone.preprocessing,
                                          [classes.index(label) for label in train["label"]])
    deadline = start + params.finetune.budget_minutes * 60

    def fit_one_cycle(groups: list[dict], epochs: int) -> None:
        optimizer = torch.optim.AdamW(groups, weight_decay=0.01)
        steps = epochs * math.ceil(len(rows) / params.finetune.batch_size)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, [group["lr"] for group in groups], total_steps=steps, pct_start=0.25)
        model.train()
        for epoch in range(epochs):
            order = torch.randperm(len(rows)).tolist()
            for images, labels in tqdm(iterate_batches(rows, params.finetune.batch_size, 2, order),
                                       desc=f"fastai-style, epoch {epoch + 1}/{epochs}",
                                       total=math.ceil(len(rows) / params.finetune.batch_size),
                                       leave=False):
                loss = functional.cross_entropy(model(images.to(device)), labels.to(device))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
            if time.perf_counter() > deadline:
                return

    body.requires_grad_(False)
    fit_one_cycle([{"params": head.parameters(), "lr": lr * 2}], 1)
    body.requires_grad_(True)
    # slice(lr/100, lr): rates spaced evenly on a log scale from the input block to the head.
    blocks = _matching(backbone.model, body, [list(block.parameters())
                                               for block in backbone.blocks])
    rates = np.geomspace(lr / 100, lr, len(blocks) + 1)
    fit_one_cycle([*({"params": block, "lr": rate} for block, rate in zip(blocks, rates[:-1],
                                                                          strict=True) if block),
                   {"params": head.parameters(), "lr": rates[-1]}], epochs)

    model.eval()
    tests = ImageFolderRows.for_evaluation(params.data.root, list(test["path"]),
                                           backbone.preprocessing)
    with torch.no_grad():
        predicted = torch.cat([model(images.to(device)).argmax(1).cpu()
                               for images, _ in iterate_batches(tests, 32, 2)])
    truth = [classes.index(label) for label in test["label"]]
    return Row(f"fastai-style fine-tune (1 frozen + {epochs} epochs, lr {lr:g})",
               *scores(truth, predicted.numpy()), time.perf_counter() - start)


def _matching(original: nn.Module, copied: nn.Module, groups: list[list[nn.Parameter]]
              ) -> list[list[nn.Parameter]]:
    """``groups`` of ``original``'s parameters, as the same parameters of its copy."""
    names = {id(p): n for n, p in original.named_parameters()}
    copied_params = dict(copied.named_parameters())
    return [[copied_params[names[id(p)]] for p in group] for group in groups]


def tlpipe_run(params, project: Path) -> tuple[Row, str]:
    start = time.perf_counter()
    for stage in (manifest, validate, features, audit):
        stage.compute(params, project)
    chosen = head.compute(params, project)
    tuned = finetune.compute(params, project)
    metrics = evaluate.compute(params, project)
    name = f"tlpipe: {chosen['chosen']}, fine-tune {tuned['verdict']}"
    notes = (f"head val {params.head.selection_metric} {chosen['val_score']:.4f}; "
             f"fine-tuning {tuned['verdict']}: {tuned['reason']}")
    return Row(name, metrics["accuracy"], metrics["macro_f1"], time.perf_counter() - start), notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=DEFAULT_DATASETS,
                        help=f"of {', '.join(DATASETS)}")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                        help="a setting for tlpipe's run, as `tlpipe run --set`")
    parser.add_argument("--fastai-epochs", type=int, default=5,
                        help="epochs with every layer trained, after the frozen one")
    parser.add_argument("--fastai-lr", type=float, default=1e-3)
    parser.add_argument("--no-baselines", action="store_true", help="tlpipe's row only")
    args = parser.parse_args()
    report = []
    for name in args.datasets.split(","):
        project = Path(tempfile.mkdtemp(prefix=f"tlpipe-bench-{name}-"))
        data = DATASETS[name](project / "data")
        params = parse_params(deep_merge({
            "data": {"root": str(data)}, "validation": {"quarantine": ["format"]},
            "tracking": {"tracking_uri": f"sqlite:///{project}/mlflow.db"}},
            overrides_from(args.set)))
        ours, notes = tlpipe_run(params, project)
        frame = load_manifest(outputs_for(params, project).validated)
        classes = class_order(frame["label"])
        rows = [ours]
        if not args.no_baselines:
            rows += [pixel_probe(params, frame, params.seed),
                     feature_probe(params, project, frame, classes),
                     fastai_fine_tune(params, project, frame, classes, args.fastai_epochs,
                                      args.fastai_lr)]
        report.append((name, int((frame["split"] == "test").sum()), rows, notes))
        shutil.rmtree(project, ignore_errors=True)

    print(f"\n{'dataset':<8} {'test':>5}  {'model':<58} {'accuracy':>8} {'macro-F1':>8} "
          f"{'minutes':>8}")
    for name, n_test, rows, notes in report:
        for row in rows:
            print(f"{name:<8} {n_test:>5}  {row.model[:58]:<58} {row.accuracy:>8.4f} "
                  f"{row.macro_f1:>8.4f} {row.seconds / 60:>8.2f}")
        print(f"{'':<8} {'':>5}  ({notes})")


if __name__ == "__main__":
    main()
