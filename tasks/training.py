"""Tasks for training: the head on cached features, then fine-tuning."""

from __future__ import annotations

from pathlib import Path

import mlflow
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.common import flat_params
from tlpipe import steps
from tlpipe.config import Params
from tlpipe.tracking import RunContext, stage_run


def _log_history(history: list[dict], prefix: str) -> None:
    for record in history:
        mlflow.log_metrics({f"{prefix}_{k}": v for k, v in record.items() if k != "epoch"},
                           step=record["epoch"])


@task(name="train-head", cache_policy=NO_CACHE)
def train_head(context: RunContext, params: Params, project: Path) -> dict:
    with stage_run(context, "head"):
        mlflow.log_params(flat_params("head", params.head))
        result = steps.train_head_step(params, project)
        _log_history(result["history"], "head")
        mlflow.log_metrics({"best_val_accuracy": result["val_accuracy"],
                            "best_epoch": result["best_epoch"]})
        mlflow.log_artifact(result["head"], "head")
        return {k: v for k, v in result.items() if k != "history"}


@task(name="finetune", cache_policy=NO_CACHE)
def finetune(context: RunContext, params: Params, project: Path) -> dict:
    """Resumes from the last epoch checkpoint when an earlier attempt was interrupted."""
    with stage_run(context, "finetune"):
        mlflow.log_params(flat_params("finetune", params.finetune))

        def log_epoch(epoch: int, record: dict) -> None:
            _log_history([record], "finetune")

        result = steps.finetune_step(params, project, on_epoch_end=log_epoch)
        if result["resumed_from_epoch"] is not None:
            mlflow.set_tag("resumed_from_epoch", result["resumed_from_epoch"])
            done = result["resumed_from_epoch"] + 1
            print(f"finetune: reused the finished run in {result['checkpoint']}"
                  if result["epochs_run"] == 0 else
                  f"finetune: resumed after epoch {done} from {result['checkpoint']}")
        mlflow.log_metric("epochs_run", result["epochs_run"])
        return {k: v for k, v in result.items() if k != "history"}
