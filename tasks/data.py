"""Tasks for data intake: the manifest and the validation gate."""

from __future__ import annotations

from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.common import flat_params, transient_only
from tlpipe import steps
from tlpipe.config import Params
from tlpipe.tracking import RunContext, stage_run
from tlpipe.validation import ValidationFailed


@task(name="build-manifest", retries=2, retry_delay_seconds=2,
      retry_condition_fn=transient_only, cache_policy=NO_CACHE)
def build_manifest(context: RunContext, params: Params, project: Path) -> dict:
    with stage_run(context, "manifest"):
        result = steps.make_manifest(params, project)
        mlflow.log_params({"data.root": str(params.data.root),
                           **flat_params("split", params.split)})
        mlflow.log_metrics({"files": result["files"], "classes": len(result["classes"])})
        mlflow.log_artifact(result["manifest"])
        MlflowClient().set_tag(context.parent_run_id, "data_fingerprint_raw", result["fingerprint"])
        return result


@task(name="validate-data", cache_policy=NO_CACHE)
def validate_data(context: RunContext, params: Params, project: Path) -> dict:
    out = steps.outputs_for(params, project)
    client = MlflowClient()
    with stage_run(context, "validate") as run_id:
        mlflow.log_params(flat_params("validation", params.validation))
        try:
            result = steps.validate(params, project)
        except ValidationFailed as failure:
            for run in (run_id, context.parent_run_id):
                client.log_artifact(run, str(out.report_md), "validation")
                client.log_artifact(run, str(out.report_json), "validation")
            print(failure.report.to_markdown())
            raise
        mlflow.log_artifacts(str(out.report_md.parent), "validation")
        client.log_artifact(context.parent_run_id, str(out.report_md), "validation")
        mlflow.log_metrics({"kept_files": result["kept"], "quarantined": result["quarantined"]})
        client.set_tag(context.parent_run_id, "data_fingerprint", result["fingerprint"])
        print(out.report_md.read_text())
        return result
