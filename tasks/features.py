"""Tasks for what the backbone sees: the augmentation preview and the cached features."""

from __future__ import annotations

from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.common import flat_params
from tlpipe import steps
from tlpipe.config import Params
from tlpipe.tracking import RunContext, stage_run


@task(name="preview-augmentation", cache_policy=NO_CACHE)
def preview_augmentation(context: RunContext, params: Params, project: Path) -> dict:
    with stage_run(context, "augment"):
        result = steps.preview_augmentation(params, project)
        mlflow.log_params(flat_params("augment", params.augment))
        mlflow.log_artifact(result["preview"], "augment")
        MlflowClient().log_artifact(context.parent_run_id, result["preview"], "augment")
        return result


@task(name="extract-features", cache_policy=NO_CACHE)
def extract_features(context: RunContext, params: Params, project: Path) -> dict:
    """Prefect's result cache is not used here: the library's per-image, content-addressed
    cache also serves partial hits (new images only) and the DVC stage."""
    with stage_run(context, "features"):
        result = steps.extract(params, project)
        mlflow.log_params({**flat_params("features", params.features),
                           "backbone.name": params.backbone.name})
        mlflow.log_metrics({k: result[k] for k in ("computed", "cached", "seconds",
                                                    "images_per_second")})
        client = MlflowClient()
        client.set_tag(context.parent_run_id, "backbone", params.backbone.name)
        client.set_tag(context.parent_run_id, "weights_digest", result["weights_digest"])
        print(f"features: {result['computed']} computed, {result['cached']} from cache "
              f"in {result['seconds']:.1f}s")
        return result
