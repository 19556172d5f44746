"""Each pipeline step inside its MLflow child run: the step, then what it records.

The Prefect tasks and the DVC stage commands both call these, so a step logs the same params,
metrics and artifacts however it is run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient
from pydantic import BaseModel

from tlpipe import steps
from tlpipe.config import Params
from tlpipe.evaluate import flat_metrics
from tlpipe.tracking import RunContext, stage_run


def flat_params(prefix: str, section: BaseModel) -> dict[str, str]:
    return {f"{prefix}.{key}": str(value) for key, value in section.model_dump(mode="json").items()}


def _log_to_run_and_parent(context: RunContext, path: str | Path, folder: str | None = None
                           ) -> None:
    """Artifacts people look for first also go on the parent run, beside the headline metrics."""
    mlflow.log_artifact(str(path), folder)
    MlflowClient().log_artifact(context.parent_run_id, str(path), folder)


def _log_history(history: list[dict], prefix: str) -> None:
    for record in history:
        mlflow.log_metrics({f"{prefix}_{k}": v for k, v in record.items() if k != "epoch"},
                           step=record["epoch"])


def manifest(context: RunContext, params: Params, project: Path) -> dict:
    with stage_run(context, "manifest"):
        result = steps.make_manifest(params, project)
        mlflow.log_params({"data.root": str(params.data.root),
                           **flat_params("split", params.split)})
        mlflow.log_metrics({"files": result["files"], "classes": len(result["classes"])})
        mlflow.log_artifact(result["manifest"])
        return result


def validate(context: RunContext, params: Params, project: Path) -> dict:
    from tlpipe.validation import ValidationFailed

    out = steps.outputs_for(params, project)
    with stage_run(context, "validate"):
        mlflow.log_params(flat_params("validation", params.validation))
        try:
            result = steps.validate(params, project)
        except ValidationFailed as failure:
            for report in (out.report_md, out.report_json):
                _log_to_run_and_parent(context, report, "validation")
            print(failure.report.to_markdown())
            raise
        for report in (out.report_md, out.report_json):
            _log_to_run_and_parent(context, report, "validation")
        mlflow.log_artifact(result["validated"], "validation")
        mlflow.log_metrics({"kept_files": result["kept"], "quarantined": result["quarantined"]})
        MlflowClient().set_tag(context.parent_run_id, "data_fingerprint", result["fingerprint"])
        print(out.report_md.read_text())
        return result


def preview(context: RunContext, params: Params, project: Path) -> dict:
    with stage_run(context, "augment"):
        result = steps.preview_augmentation(params, project)
        mlflow.log_params(flat_params("augment", params.augment))
        _log_to_run_and_parent(context, result["preview"], "augment")
        return result


def features(context: RunContext, params: Params, project: Path) -> dict:
    with stage_run(context, "features"):
        result = steps.extract(params, project)
        mlflow.log_params({**flat_params("features", params.features),
                           "backbone.name": params.backbone.name})
        mlflow.log_metrics({k: result[k] for k in ("computed", "cached", "seconds",
                                                    "images_per_second")})
        MlflowClient().set_tag(context.parent_run_id, "weights_digest", result["weights_digest"])
        print(f"features: {result['computed']} computed, {result['cached']} from cache "
              f"in {result['seconds']:.1f}s")
        return result


def head(context: RunContext, params: Params, project: Path) -> dict:
    with stage_run(context, "head"):
        mlflow.log_params(flat_params("head", params.head))
        result = steps.train_head_step(params, project)
        _log_history(result["history"], "head")
        mlflow.log_metrics({"best_val_accuracy": result["val_accuracy"],
                            "best_epoch": result["best_epoch"]})
        mlflow.log_artifact(result["head"], "head")
        return {k: v for k, v in result.items() if k != "history"}


def finetune(context: RunContext, params: Params, project: Path) -> dict:
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


def evaluate(context: RunContext, params: Params, project: Path) -> dict:
    with stage_run(context, "evaluate"):
        result = steps.evaluate_step(params, project)
        headline = flat_metrics(json.loads(Path(result["metrics"]).read_text()))
        mlflow.log_metrics(headline)
        client = MlflowClient()
        for name, value in headline.items():
            client.log_metric(context.parent_run_id, name, value)
        for key in ("metrics", "confusion_matrix", "learning_curves"):
            _log_to_run_and_parent(context, result[key], "evaluation")
        print(f"test accuracy {result['accuracy']:.4f}, macro-F1 {result['macro_f1']:.4f}, "
              f"ECE {result['ece']:.4f}")
        return {**result, "headline": headline}


def register(context: RunContext, params: Params, project: Path, facts: dict) -> dict:
    from tlpipe.manifest import load_manifest
    from tlpipe.registry import log_and_register

    out = steps.outputs_for(params, project)
    with stage_run(context, "register"):
        _log_to_run_and_parent(context, steps.write_model_card(params, project, facts))
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


# The stages DVC runs, by name, in pipeline order (registration stays with the flow).
DVC_STAGES: dict[str, Callable[[RunContext, Params, Path], dict]] = {
    "manifest": manifest, "validate": validate, "augment": preview, "features": features,
    "head": head, "finetune": finetune, "evaluate": evaluate,
}
