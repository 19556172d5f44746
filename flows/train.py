"""The training flow: validate the images, learn from them, evaluate, register, promote."""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.runtime import flow_run

from flows.promote import promote_flow
from tasks.steps import (
    build_manifest,
    evaluate,
    extract_feature_shard,
    extract_features,
    finetune,
    preview_augmentation,
    register_model,
    train_head,
    validate_data,
)
from tlpipe.config import Params
from tlpipe.steps import data_root
from tlpipe.tracking import lineage_tags, pipeline_run


@flow(name="tlpipe-train", log_prints=True)
def train_flow(params: Params, project_dir: str = ".") -> dict:
    """Validate the data, extract cached features, train the head, fine-tune, evaluate on the
    held-out test split, register the model as the challenger, then let the promotion gate
    decide whether it becomes champion."""
    project = Path(project_dir).resolve()
    tags = {"params_hash": params.digest(), "backbone": params.backbone.name,
            "prefect_flow_run_id": str(flow_run.get_id()), "trigger": "flow",
            **lineage_tags(project, data_root(params, project))}
    with pipeline_run(params.tracking, project, "train", tags) as run:
        build_manifest(run, params, project)
        data = validate_data(run, params, project)
        preview_augmentation(run, params, project)
        if params.features.shards > 1:  # the cache filled part by part, then read whole
            for index in range(params.features.shards):
                extract_feature_shard(params, project, index)
        features = extract_features(run, params, project)
        train_head(run, params, project)
        finetune(run, params, project)
        evaluation = evaluate(run, params, project)
        facts = {**tags, "data_fingerprint": data["fingerprint"],
                 "weights_digest": features["weights_digest"],
                 **{k: round(v, 6) for k, v in evaluation["headline"].items()
                    if k in ("test_accuracy", "test_macro_f1", "test_ece")}}
        version = register_model(run, params, project, facts)
    # After the training run is closed, so a refused promotion never marks training FAILED.
    promotion = (promote_flow(params, project_dir, version=str(version["version"]))
                 if params.promotion.after_training else None)
    return {"run_id": run.parent_run_id, "model": version, "features": features,
            "test_accuracy": evaluation["accuracy"], "test_macro_f1": evaluation["macro_f1"],
            "promotion": promotion}
