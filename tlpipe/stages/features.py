"""features: the frozen backbone's feature vectors for every image view, in the feature cache.

Writes the plan (one row per vector: image, split, view, cache key). The cache is
content-addressed, so a view computed by any earlier run, shard or experiment is reused.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from tlpipe import tags
from tlpipe.backbones import Backbone, backbone_for
from tlpipe.config import Params
from tlpipe.feature_store import FeatureCache
from tlpipe.features import FeatureSpec, extract_features, plan_views, save_plan, shard_of
from tlpipe.manifest import load_manifest
from tlpipe.paths import data_root, outputs_for, resolve
from tlpipe.tracking import RunContext, flat_params, stage_run

STAGE = __name__.rpartition(".")[2]


def feature_spec(params: Params, backbone: Backbone) -> FeatureSpec:
    return FeatureSpec(
        weights_digest=backbone.weights_digest, preprocessing=backbone.preprocessing.to_dict(),
        augment=params.augment.model_dump(mode="json"), precision=params.features.precision,
        channels_last=params.features.channels_last, seed=params.seed,
    )


def _plan(params: Params, project: Path) -> tuple[pd.DataFrame, Backbone, FeatureCache]:
    backbone = backbone_for(params.backbone, project)
    plan = plan_views(load_manifest(outputs_for(params, project).validated),
                      params.features.views, feature_spec(params, backbone))
    return plan, backbone, FeatureCache(resolve(project, params.features.cache_dir))


def _fill(params: Params, project: Path, plan: pd.DataFrame, backbone: Backbone,
          cache: FeatureCache) -> dict:
    stats = extract_features(plan, data_root(params, project), backbone, params.features,
                             params.augment, params.seed, cache)
    return {"computed": stats.computed, "cached": stats.cached, "seconds": stats.seconds,
            "images_per_second": stats.images_per_second,
            "weights_digest": backbone.weights_digest}


def fill_shard(params: Params, project: Path, index: int) -> dict:
    """Fill the cache for part ``index`` of ``features.shards``. Shards can run anywhere that
    shares the cache folder, in any order; ``compute`` then finds every view cached."""
    plan, backbone, cache = _plan(params, project)
    part = shard_of(plan, index, params.features.shards)
    return {"shard": index, **_fill(params, project, part, backbone, cache)}


def compute(params: Params, project: Path) -> dict:
    out = outputs_for(params, project)
    plan, backbone, cache = _plan(params, project)
    stats = _fill(params, project, plan, backbone, cache)
    save_plan(plan, out.plan)
    return {"plan": str(out.plan), **stats}


def run(context: RunContext, params: Params, project: Path) -> dict:
    with stage_run(context, STAGE):
        result = compute(params, project)
        mlflow.log_params({**flat_params("features", params.features),
                           "backbone.name": params.backbone.name})
        mlflow.log_metrics({k: result[k] for k in ("computed", "cached", "seconds",
                                                    "images_per_second")})
        MlflowClient().set_tag(context.parent_run_id, tags.WEIGHTS_DIGEST,
                               result["weights_digest"])
        print(f"features: {result['computed']} computed, {result['cached']} from cache "
              f"in {result['seconds']:.1f}s")
        return result
