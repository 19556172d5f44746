"""The training recipe against simple baselines, on data near and far from ImageNet.

For each dataset, on one split (tlpipe's own, by content hash; the test split chooses nothing):
tlpipe's registered model (the ladder's head, fine-tuned only when that helps on validation),
a logistic regression on raw pixels, and a logistic regression on the same backbone's
features (plain view of every image, its C chosen by 5-fold CV on train + val). Datasets:
scikit-learn's digits (8x8 greyscale, 10 classes, upsampled), a 10-per-class slice of the
ants/bees demo, and generated greyscale shapes (3 classes).

    .venv/bin/python bench/recipe.py [--datasets digits,fewshot,shapes] [--finetune-epochs 1]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from common import DEMO
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegressionCV
from sklearn.metrics import accuracy_score, f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from tests.images import write_shapes
from tlpipe.data.manifest import load_manifest
from tlpipe.devices import resolve_device
from tlpipe.params_file import parse_params
from tlpipe.paths import outputs_for
from tlpipe.stages import audit, evaluate, features, finetune, head, manifest, validate
from tlpipe.stages.features import feature_spec
from tlpipe.training.heads import class_order
from tlpipe.vectors.backbones import backbone_for
from tlpipe.vectors.features import extract_features, plan_views
from tlpipe.vectors.images import load_rgb
from tlpipe.vectors.store import FeatureStore, load_split


def digits(root: Path, per_class: int = 40) -> Path:
    images, labels = load_digits(return_X_y=True)
    counts: dict[int, int] = {}
    for pixels, label in zip(images, labels, strict=True):
        if counts.get(label, 0) >= per_class:
            continue
        counts[label] = counts.get(label, 0) + 1
        folder = root / f"digit_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray((pixels.reshape(8, 8) * 255 / 16).astype(np.uint8), "L")
        image.resize((64, 64), Image.Resampling.BICUBIC).save(folder / f"{counts[label]}.png")
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


DATASETS = {"digits": digits, "fewshot": fewshot,
            "shapes": lambda root: write_shapes(root, per_class=40)}


def scores(truth, predicted) -> tuple[float, float]:
    return (accuracy_score(truth, predicted),
            f1_score(truth, predicted, average="macro", zero_division=0))


def probe(train_x, train_y, test_x, seed: int):
    model = make_pipeline(StandardScaler(), LogisticRegressionCV(
        Cs=np.logspace(-4, 1, 11), cv=5, max_iter=3000, random_state=seed))
    return model.fit(train_x, train_y).predict(test_x)


def baselines(params, project: Path, seed: int) -> list[tuple[str, float, float, float]]:
    frame = load_manifest(outputs_for(params, project).validated)
    classes = class_order(frame["label"])
    fit = frame[frame["split"] != "test"]
    test = frame[frame["split"] == "test"]
    rows = []

    start = time.perf_counter()
    def pixels(part):
        return np.stack([np.asarray(load_rgb(params.data.root / path).convert("L").resize(
            (32, 32)), dtype=np.float32).ravel() / 255 for path in part["path"]])
    predicted = probe(pixels(fit), fit["label"], pixels(test), seed)
    rows.append(("logistic on raw pixels (32x32 grey)",
                 *scores(test["label"], predicted), time.perf_counter() - start))

    start = time.perf_counter()
    backbone = backbone_for(params.backbone, project)
    plan = plan_views(frame.assign(split=frame["split"].where(frame["split"] == "test",
                                                              "fit")),
                      1, feature_spec(params, backbone))
    cache = FeatureStore(str(project / ".cache" / "features"))
    extract_features(plan, params.data.root, backbone, params.features, params.augment,
                     params.seed, cache, resolve_device(params.device))
    (fit_x, fit_y), (test_x, test_y) = (load_split(plan, cache, split, classes)
                                        for split in ("fit", "test"))
    predicted = probe(fit_x.numpy(), fit_y.numpy(), test_x.numpy(), seed)
    rows.append(("logistic on the backbone's features",
                 *scores(test_y.numpy(), predicted), time.perf_counter() - start))
    return rows


def tlpipe_run(params, project: Path) -> tuple[tuple[str, float, float, float], str]:
    start = time.perf_counter()
    for stage in (manifest, validate, features, audit):
        stage.compute(params, project)
    chosen = head.compute(params, project)
    tuned = finetune.compute(params, project)
    metrics = evaluate.compute(params, project)
    name = f"tlpipe: {chosen['chosen']}, fine-tune {tuned['verdict']}"
    notes = (f"head val {params.head.selection_metric} {chosen['val_score']:.4f}; "
             f"fine-tuning {tuned['verdict']}: {tuned['reason']}")
    return (name, metrics["accuracy"], metrics["macro_f1"], time.perf_counter() - start), notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--eval-resize", default="auto", choices=["crop", "resize", "auto"])
    args = parser.parse_args()
    report = []
    for name in args.datasets.split(","):
        project = Path(tempfile.mkdtemp(prefix=f"tlpipe-bench-{name}-"))
        data = DATASETS[name](project / "data")
        params = parse_params({
            "data": {"root": str(data)}, "validation": {"quarantine": ["format"]},
            "features": {"eval_resize": args.eval_resize},
            "finetune": {"epochs": args.finetune_epochs},
            "tracking": {"tracking_uri": f"sqlite:///{project}/mlflow.db"}})
        ours, notes = tlpipe_run(params, project)
        rows = [ours, *baselines(params, project, params.seed)]
        test = load_manifest(outputs_for(params, project).validated).query("split == 'test'")
        report.append((name, len(test), rows, notes))
        shutil.rmtree(project, ignore_errors=True)

    print(f"\n{'dataset':<8} {'test':>5}  {'model':<58} {'accuracy':>8} {'macro-F1':>8} "
          f"{'seconds':>8}")
    for name, n_test, rows, notes in report:
        for model, accuracy, macro_f1, seconds in rows:
            print(f"{name:<8} {n_test:>5}  {model[:58]:<58} {accuracy:>8.4f} {macro_f1:>8.4f} "
                  f"{seconds:>8.1f}")
        print(f"{'':<8} {'':>5}  ({notes})")


if __name__ == "__main__":
    main()
