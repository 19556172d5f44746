"""Throughput of the whole feature step against a bare backbone forward on the same batches.

The whole step decodes, transforms, runs the backbone and writes the cache; the baseline runs
only the backbone on batches decoded beforehand. A ratio near 1 means the step's overhead is
small. Both use the configured precision and memory format.

    .venv/bin/python bench/feature_extraction.py [--images N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from common import DEMO, demo_manifest

from tlpipe.backbones import load_backbone
from tlpipe.feature_store import FeatureCache
from tlpipe.features import extract_features, forward_features, plan_views
from tlpipe.preprocess import ImageFolderRows, eval_transform, iterate_batches
from tlpipe.stages.features import feature_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=192)
    args = parser.parse_args()
    manifest, params = demo_manifest()
    manifest = manifest.sort_values("sha256").head(args.images).assign(split="test")
    backbone = load_backbone()
    if params.features.channels_last:
        backbone.model.to(memory_format=torch.channels_last)
    plan = plan_views(manifest, params.features.views, feature_spec(params, backbone))

    batches = list(iterate_batches(
        ImageFolderRows(DEMO, plan["path"].tolist(), eval_transform(backbone.preprocessing)),
        params.features.batch_size))
    forward_features(backbone, batches[0][0], params.features)  # warm-up, both sides alike
    start = time.perf_counter()
    for images, _ in batches:
        forward_features(backbone, images, params.features)
    bare = len(plan) / (time.perf_counter() - start)

    with tempfile.TemporaryDirectory() as cache_dir:
        stats = extract_features(plan, DEMO, backbone, params.features, params.augment,
                                 params.seed, FeatureCache(Path(cache_dir)))
        again = extract_features(plan, DEMO, backbone, params.features, params.augment,
                                 params.seed, FeatureCache(Path(cache_dir)))
    whole = stats.images_per_second
    print(f"images: {len(plan)}  precision: {params.features.precision}  "
          f"channels_last: {params.features.channels_last}  threads: {torch.get_num_threads()}")
    print(f"bare backbone forward:              {bare:7.1f} images/s")
    print(f"whole step (decode+forward+cache):  {whole:7.1f} images/s")
    print(f"ratio whole/bare:                   {whole / bare:7.2f}")
    print(f"second pass (all cached):           {again.seconds:7.3f} s, "
          f"{again.computed} forwards")


if __name__ == "__main__":
    main()
