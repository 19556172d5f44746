"""Every feature engine on the same images: bare forward, whole feature step, fidelity; and
decoding large JPEGs at full and at reduced size.

The bare forward runs only the backbone on batches decoded beforehand; the whole step decodes,
transforms, runs the backbone and writes the cache (``extract_features``), as the features
stage does. Fidelity is the largest 1 - cosine against PyTorch float32 on the same batches.
With a GPU, the torch engine on it is measured too (pinned batches, as the stage runs it).
The ratios compare engines measured in this one run: read them, not the absolute figures,
which swing with the machine's load.

    .venv/bin/python bench/engines.py [--images N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import DEMO, demo_manifest
from PIL import Image, ImageDraw

from tlpipe.devices import CPU
from tlpipe.stages.features import feature_spec
from tlpipe.vectors.backbones import load_backbone
from tlpipe.vectors.engines import (
    check_fidelity,
    cosine_distances,
    engine_placement,
    feature_engine,
    placed,
    torch_forward,
)
from tlpipe.vectors.features import extract_features, plan_views
from tlpipe.vectors.preprocess import (
    ImageFolderRows,
    eval_decode_side,
    eval_transform,
    iterate_batches,
)
from tlpipe.vectors.store import FeatureStore

# (label, settings, device): the torch bf16 CPU engine first, the baseline of every ratio.
ENGINES = [
    ("torch bf16 channels_last", {"engine": "torch", "precision": "bf16",
                                  "channels_last": True}, CPU),
    ("torch fp32", {"engine": "torch", "precision": "fp32", "channels_last": False}, CPU),
    ("onnxruntime fp32", {"engine": "onnxruntime"}, CPU),
    ("onnxruntime fp32, 2 decoders", {"engine": "onnxruntime", "num_workers": 2}, CPU),
] + ([("torch bf16 channels_last cuda", {"engine": "torch", "num_workers": 4},
       torch.device("cuda"))] if torch.cuda.is_available() else [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=192)
    parser.add_argument("--large", type=int, default=16, help="large JPEGs to decode")
    args = parser.parse_args()
    manifest, params = demo_manifest()
    manifest = manifest.sort_values("sha256").head(args.images).assign(split="test")
    backbone = load_backbone()
    batches = [images for images, _ in iterate_batches(
        ImageFolderRows.for_evaluation(DEMO, manifest["path"].tolist(), backbone.preprocessing),
        params.features.batch_size)]
    print(f"images: {len(manifest)}  batch: {params.features.batch_size}  "
          f"threads: {torch.get_num_threads()}  decoders: {params.features.num_workers}")
    engines(backbone, manifest, batches, params)
    large_jpegs(backbone, args.large)


def engines(backbone, manifest, batches, params) -> None:
    reference = np.concatenate([feature_engine(backbone, params.features.model_copy(
        update=ENGINES[1][1]), Path(), CPU).forward(batch) for batch in batches])
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for label, settings, device in ENGINES:
            workdir = Path(folder) / label.replace(" ", "-")
            store = FeatureStore(str(workdir / "features"))
            config = params.features.model_copy(update={
                **settings, "engine_dir": workdir / "engines"})
            with placed(backbone.model, *engine_placement(config, device)):
                started = time.perf_counter()  # an exported engine: made here, reused below
                engine = feature_engine(backbone, config, workdir / "engines", device)
                engine.forward(batches[0])  # warm-up
                # An engine's first use checks it against torch fp32 once and records the
                # result; that one-off cost is timed with "made in", not with the step.
                check_fidelity(engine, backbone, batches[0], config)
                made_s = time.perf_counter() - started
                pinned = ([batch.pin_memory() for batch in batches] if engine.pin_memory
                          else batches)
                started = time.perf_counter()
                vectors = np.concatenate([engine.forward(batch) for batch in pinned])
                bare = len(vectors) / (time.perf_counter() - started)
            worst = float(cosine_distances(vectors, reference).max())
            run_params = params.model_copy(update={"features": config})
            plan = plan_views(manifest, 1, feature_spec(run_params, backbone))
            stats = extract_features(plan, DEMO, backbone, config, params.augment, params.seed,
                                     store, device)
            rows.append((label, made_s, bare, stats.images_per_second, worst))

    baseline_step = rows[0][3]
    print(f"\n{'engine':30} {'made in':>8} {'bare img/s':>11} {'step img/s':>11} "
          f"{'step/bare':>9} {'step vs torch bf16':>18} {'max 1-cos':>10}")
    for label, made_s, bare, step, worst in rows:
        print(f"{label:30} {made_s:7.1f}s {bare:11.1f} {step:11.1f} {step / bare:9.2f} "
              f"{step / baseline_step:17.2f}x {worst:10.1e}")


def large_jpegs(backbone, count: int) -> None:
    """Phone-camera-sized JPEGs (4032x3024), loaded as the plain view is: full decode, then
    decoded at reduced size (``images.load_rgb``'s ``min_side``); and how far the features of
    the two differ."""
    preprocessing = backbone.preprocessing
    with tempfile.TemporaryDirectory() as folder:
        paths = write_photos(Path(folder), count)
        rows = {}
        for label, side in (("full decode", None), ("reduced decode", eval_decode_side(
                preprocessing))):
            dataset = ImageFolderRows(Path(folder), paths, eval_transform(preprocessing), side)
            started = time.perf_counter()
            batch = torch.stack([dataset[i][0] for i in range(len(dataset))])
            rows[label] = ((time.perf_counter() - started) / count * 1000,
                           torch_forward(backbone, "fp32", False)(batch))
    full_ms, full = rows["full decode"]
    reduced_ms, reduced = rows["reduced decode"]
    print(f"\nlarge JPEGs ({count} x 4032x3024), plain view, one thread: full decode "
          f"{full_ms:.1f} ms/img, reduced decode {reduced_ms:.1f} ms/img "
          f"({full_ms / reduced_ms:.1f}x); features 1-cos between them: max "
          f"{cosine_distances(reduced, full).max():.1e}")


def write_photos(folder: Path, count: int) -> list[str]:
    """Smooth random scenes with edges, saved as quality-90 JPEGs of 4032x3024."""
    generator = np.random.default_rng(0)
    paths = []
    for index in range(count):
        small = generator.integers(0, 256, (48, 64, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((4032, 3024), Image.Resampling.BICUBIC)
        ImageDraw.Draw(image).ellipse((800 + index * 50, 600, 2800, 2400), outline="white",
                                      width=40)
        image.save(folder / f"photo{index}.jpg", quality=90)
        paths.append(f"photo{index}.jpg")
    return paths


if __name__ == "__main__":
    main()
