"""Task that logs the model and registers it as a new version under the challenger alias."""

from __future__ import annotations

from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.common import transient_only
from tlpipe import steps
from tlpipe.config import Params
from tlpipe.manifest import load_manifest
from tlpipe.registry import log_and_register
from tlpipe.tracking import RunContext, stage_run


@task(name="register-model", retries=2, retry_delay_seconds=3,
      retry_condition_fn=transient_only, cache_policy=NO_CACHE)
def register_model(context: RunContext, params: Params, project: Path, facts: dict) -> dict:
    out = steps.outputs_for(params, project)
    with stage_run(context, "register"):
        card = steps.write_model_card(params, project, facts)
        mlflow.log_artifact(str(card))
        MlflowClient().log_artifact(context.parent_run_id, str(card))
        test = load_manifest(out.validated).query("split == 'test'")
        version = log_and_register(
            out.model_dir, params.registry.model_name, params.registry.alias,
            steps.data_root(params, project) / test["path"].iloc[0],
            {**facts, "pipeline_run_id": context.parent_run_id},
        )
        MlflowClient().set_tag(context.parent_run_id, "model_version", version.version)
        print(f"registered {params.registry.model_name} version {version.version} "
              f"as @{params.registry.alias}")
        return {"name": params.registry.model_name, "version": version.version,
                "alias": params.registry.alias, "source": version.source}
