"""Task for held-out evaluation and its plots."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient
from prefect import task
from prefect.cache_policies import NO_CACHE

from tlpipe import steps
from tlpipe.config import Params
from tlpipe.evaluate import flat_metrics
from tlpipe.tracking import RunContext, stage_run


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate(context: RunContext, params: Params, project: Path) -> dict:
    with stage_run(context, "evaluate"):
        result = steps.evaluate_step(params, project)
        headline = flat_metrics(json.loads(Path(result["metrics"]).read_text()))
        mlflow.log_metrics(headline)
        client = MlflowClient()
        for name, value in headline.items():
            client.log_metric(context.parent_run_id, name, value)
        for key in ("metrics", "confusion_matrix", "learning_curves"):
            mlflow.log_artifact(result[key], "evaluation")
            client.log_artifact(context.parent_run_id, result[key], "evaluation")
        print(f"test accuracy {result['accuracy']:.4f}, macro-F1 {result['macro_f1']:.4f}, "
              f"ECE {result['ece']:.4f}")
        return {**result, "headline": headline}
