"""head: the ladder of candidate heads on cached features; the best on validation is the head.

Writes the chosen head (weights and spec), the leaderboard of every candidate, and the
learning curve when the chosen head is a trained one. The test split is never read.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient
from safetensors.torch import save_file

from tlpipe import tags
from tlpipe.config import Params
from tlpipe.data.quarantine import without_quarantined
from tlpipe.devices import resolve_device
from tlpipe.fsio import file_sha256, write_atomic, write_json
from tlpipe.ops.tracking import RunContext, flat_params, log_history, stage_run
from tlpipe.paths import feature_store, outputs_for
from tlpipe.training.cached import Features
from tlpipe.training.head_kinds import head_kind
from tlpipe.training.heads import HeadSpec, class_order
from tlpipe.training.ladder import Candidate, fit, score, select
from tlpipe.vectors.text_features import chosen_model

STAGE = __name__.rpartition(".")[2]


def compute(params: Params, project: Path) -> dict:
    out = outputs_for(params, project)
    plan = pd.read_parquet(out.plan)
    classes = class_order(plan["label"])
    plan = without_quarantined(plan, out.quarantine)
    store = feature_store(params, project)
    train, val = (Features.from_plan(plan, store, split, classes) for split in ("train", "val"))
    if len(val) == 0:
        raise ValueError("split.val_fraction: the validation split is empty; raise it or add "
                         "images, choosing a head and early stopping need validation data")
    device = resolve_device(params.device)
    chosen, leaderboard = select(train, val, len(classes), params.head, params.seed, device)
    head, spec, history = fit(chosen, train, val, len(classes), params.head, params.seed, device)
    val_score = score(head, val, params.head.selection_metric)
    fitted_on = "train"
    best = next(row for row in leaderboard if row.chosen)
    if _refit_on_validation(params, project, chosen, spec, best.protocol):
        head, spec, history = fit(chosen, Features.join(train, val), None, len(classes),
                                  params.head, params.seed, device)
        val_score, fitted_on = best.score, "train+val"  # its own val images: CV tells
    state = {k: v.contiguous() for k, v in head.state_dict().items()}
    write_atomic(out.head_weights, lambda path: save_file(state, str(path)))
    write_json(out.head_spec, {"spec": spec.to_dict(), "candidate": chosen.name,
                               "settings": chosen.settings, "classes": classes,
                               "fitted_on": fitted_on,
                               "images": {"train": len(np.unique(train.groups)),
                                          "val": len(np.unique(val.groups))},
                               f"val_{params.head.selection_metric}": val_score})
    # Timings go to MLflow and the console only: this file is compared across rebuilds.
    write_json(out.leaderboard, [{k: v for k, v in row.to_dict().items() if k != "seconds"}
                                 for row in leaderboard])
    write_json(out.head_history, {"epochs": history.epochs, "best_epoch": history.best_epoch})
    return {"head": str(out.head_weights), "sha256": file_sha256(out.head_weights),
            "chosen": chosen.name, "kind": spec.kind, "val_score": val_score,
            "leaderboard": [row.to_dict() for row in leaderboard], "history": history.epochs}


def _refit_on_validation(params: Params, project: Path, chosen: Candidate, spec: HeadSpec,
                         protocol: str) -> bool:
    def fine_tuned_next() -> bool:  # loads the backbone: asked only when the rest allows a refit
        choice = json.loads(outputs_for(params, project).preprocessing.read_text())
        backbone = chosen_model(choice, params.backbone, project)
        return params.finetune.epochs > 0 and bool(backbone.blocks) and spec.fine_tunable

    return refits_on_validation(protocol, chosen.kind, fine_tuned_next)


def refits_on_validation(protocol: str, kind: str, fine_tuned_next: Callable[[], bool]) -> bool:
    """Whether the head is fitted again on the training and validation images together: when
    the validation split was too small to choose by (the ladder cross-validated), the head
    needs none to stop early by, and nothing after it needs validation images it has not
    seen (fine-tuning compares itself with the head there). Data like digits' pixels then
    trains on 15% more images, as a cross-validated estimator refits on all."""
    return not (protocol == "validation" or head_kind(kind).early_stopping
                or fine_tuned_next())


def run(context: RunContext, params: Params, project: Path) -> dict:
    with stage_run(context, STAGE):
        mlflow.log_params(flat_params("head", params.head))
        result = compute(params, project)
        log_history(result["history"], "head")
        mlflow.log_table(pd.DataFrame(result["leaderboard"]), "leaderboard.json")
        mlflow.log_metric(f"val_{params.head.selection_metric}", result["val_score"])
        mlflow.set_tag("head.chosen", result["chosen"])
        MlflowClient().set_tag(context.parent_run_id, tags.HEAD, result["chosen"])
        mlflow.log_artifact(result["head"], "head")
        print(f"head: {result['chosen']} chosen from {len(result['leaderboard'])} candidates, "
              f"validation {params.head.selection_metric} {result['val_score']:.4f} "
              f"(leaderboard: {outputs_for(params, project).leaderboard})")
        return {k: v for k, v in result.items() if k != "history"}
