"""Every feature engine on the same images: bare forward, whole feature step, fidelity.

The bare forward runs only the backbone on batches decoded beforehand; the whole step decodes,
transforms, runs the backbone and writes the cache (``extract_features``), as the features
stage does. Fidelity is the largest 1 - cosine against PyTorch float32 on the same batches.
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

from tlpipe.backbones import load_backbone
from tlpipe.engines import check_fidelity, cosine_distances, feature_engine
from tlpipe.feature_store import FeatureCache
from tlpipe.features import extract_features, plan_views
from tlpipe.preprocess import ImageFolderRows, eval_transform, iterate_batches
from tlpipe.stages.features import feature_spec

# (label, settings): today's torch default first, the baseline of every ratio.
ENGINES = [
    ("torch bf16 channels_last", {"engine": "torch", "precision": "bf16",
                                  "channels_last": True}),
    ("torch fp32", {"engine": "torch", "precision": "fp32", "channels_last": False}),
    ("onnxruntime fp32", {"engine": "onnxruntime"}),
    ("onnxruntime fp32, 2 decoders", {"engine": "onnxruntime", "num_workers": 2}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=192)
    args = parser.parse_args()
    manifest, params = demo_manifest()
    manifest = manifest.sort_values("sha256").head(args.images).assign(split="test")
    backbone = load_backbone()
    batches = [images for images, _ in iterate_batches(
        ImageFolderRows(DEMO, manifest["path"].tolist(), eval_transform(backbone.preprocessing)),
        params.features.batch_size)]
    print(f"images: {len(manifest)}  batch: {params.features.batch_size}  "
          f"threads: {torch.get_num_threads()}  decoders: {params.features.num_workers}")

    reference = np.concatenate([feature_engine(backbone, params.features.model_copy(
        update=ENGINES[1][1]), Path()).forward(batch) for batch in batches])
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for label, settings in ENGINES:
            cache = FeatureCache(Path(folder) / label.replace(" ", "-"))
            config = params.features.model_copy(update={
                **settings, "engine_dir": cache.directory / "engines"})
            started = time.perf_counter()  # an exported engine: made here, reused by the step
            engine = feature_engine(backbone, config, cache.directory / "engines")
            engine.forward(batches[0])  # warm-up
            # An engine's first use checks it against torch fp32 once and records the result;
            # that one-off cost is timed with "made in", not with the step.
            check_fidelity(engine, backbone, batches[0], config)
            made_s = time.perf_counter() - started
            started = time.perf_counter()
            vectors = np.concatenate([engine.forward(batch) for batch in batches])
            bare = len(vectors) / (time.perf_counter() - started)
            worst = float(cosine_distances(vectors, reference).max())
            run_params = params.model_copy(update={"features": config})
            plan = plan_views(manifest, 1, feature_spec(run_params, backbone))
            stats = extract_features(plan, DEMO, backbone, config, params.augment, params.seed,
                                     cache)
            rows.append((label, made_s, bare, stats.images_per_second, worst))

    baseline_step = rows[0][3]
    print(f"\n{'engine':30} {'made in':>8} {'bare img/s':>11} {'step img/s':>11} "
          f"{'step/bare':>9} {'step vs torch bf16':>18} {'max 1-cos':>10}")
    for label, made_s, bare, step, worst in rows:
        print(f"{label:30} {made_s:7.1f}s {bare:11.1f} {step:11.1f} {step / bare:9.2f} "
              f"{step / baseline_step:17.2f}x {worst:10.1e}")


if __name__ == "__main__":
    main()
