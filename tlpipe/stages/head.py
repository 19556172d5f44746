"""head: the classifier head, trained on cached features with early stopping on validation."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
from safetensors.torch import save_file

from tlpipe.config import Params
from tlpipe.feature_store import FeatureCache, load_split
from tlpipe.fsio import file_sha256, write_atomic, write_json
from tlpipe.head import class_order, train_head
from tlpipe.paths import outputs_for, resolve
from tlpipe.tracking import RunContext, flat_params, log_history, stage_run

STAGE = __name__.rpartition(".")[2]


def compute(params: Params, project: Path) -> dict:
    out = outputs_for(params, project)
    plan = pd.read_parquet(out.plan)
    classes = class_order(plan["label"])
    cache = FeatureCache(resolve(project, params.features.cache_dir))
    train_x, train_y = load_split(plan, cache, "train", classes)
    val_x, val_y = load_split(plan, cache, "val", classes)
    if len(val_x) == 0:
        raise ValueError("split.val_fraction: the validation split is empty; raise it or add "
                         "images, early stopping needs validation data")
    head, history = train_head(train_x, train_y, val_x, val_y, len(classes), params.head,
                               params.seed)
    state = {k: v.contiguous() for k, v in head.state_dict().items()}
    write_atomic(out.head_weights, lambda path: save_file(state, str(path)))
    write_json(out.head_history, {"epochs": history.epochs, "best_epoch": history.best_epoch})
    best = history.epochs[history.best_epoch]
    return {"head": str(out.head_weights), "sha256": file_sha256(out.head_weights),
            "best_epoch": history.best_epoch, "val_accuracy": best["val_accuracy"],
            "val_loss": best["val_loss"], "history": history.epochs}


def run(context: RunContext, params: Params, project: Path) -> dict:
    with stage_run(context, STAGE):
        mlflow.log_params(flat_params("head", params.head))
        result = compute(params, project)
        log_history(result["history"], "head")
        mlflow.log_metrics({"best_val_accuracy": result["val_accuracy"],
                            "best_epoch": result["best_epoch"]})
        mlflow.log_artifact(result["head"], "head")
        return {k: v for k, v in result.items() if k != "history"}
