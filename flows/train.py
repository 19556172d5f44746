"""The training flow: validate the images, learn from them, evaluate, register, promote."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, unmapped
from prefect.runtime import flow_run
from prefect.states import Completed, State

from tlpipe import tags
from tlpipe.config import Params
from tlpipe.flows.hooks import cancelled_when_stopped
from tlpipe.flows.promote import promote_flow
from tlpipe.ops.tracking import pipeline_run
from tlpipe.paths import data_root
from tlpipe.registry.lineage import lineage_tags
from tlpipe.tasks import artifacts
from tlpipe.tasks.registry import check_same_classes
from tlpipe.tasks.stages import features_shard, stage


@flow(name="tlpipe-train", log_prints=True, on_crashed=[cancelled_when_stopped])
def train_flow(params: Params, project_dir: str = ".") -> State:
    """Validate the data, extract cached features, audit them (label issues, leaks, outliers),
    train the head on the audited images, fine-tune, evaluate on the held-out test split,
    register the model as the challenger, then let the promotion gate decide whether it
    becomes champion. Each step is ``tlpipe/stages/<name>.py``."""
    project = Path(project_dir).resolve()
    run_tags = {tags.PARAMS_HASH: params.digest(), tags.BACKBONE: params.backbone.name,
                tags.PREFECT_FLOW_RUN_ID: str(flow_run.get_id()), tags.TRIGGER: "flow",
                **lineage_tags(project, data_root(params, project))}
    with pipeline_run(params.tracking, project, "train", run_tags) as run:
        # Outputs go to this run's own folder: a run never overwrites the DVC pipeline's
        # outputs (nor dirties the git tree), whatever data or settings it was given.
        settings = params.for_run(run.parent_run_id)
        manifest = stage.manifest(run, settings, project)
        check_same_classes(settings.registry, manifest["classes"])
        try:
            stage.validate(run, settings, project)
        finally:  # the verdict, pass or fail, for the Prefect UI
            artifacts.publish_validation(settings, project)
        stage.augment(run, settings, project)
        if params.features.shards > 1:  # the cache filled part by part, then read whole
            features_shard.map(unmapped(settings), unmapped(project),
                               range(params.features.shards)).result()
        features = stage.features(run, settings, project)
        try:
            audit = stage.audit(run, settings, project)
        finally:  # the findings, whether or not a fail verdict stopped the run
            artifacts.publish_audit(settings, project)
        head = stage.head(run, settings, project)
        finetune = stage.finetune(run, settings, project)
        evaluation = stage.evaluate(run, settings, project)
        artifacts.publish_test_metrics(settings, evaluation)
        version = stage.register(run, settings, project)
    # After the training run is closed, so a refused promotion never marks training FAILED.
    promotion = (promote_flow(params, project_dir, version=str(version["version"]))
                 if params.promotion.after_training else None)
    summary = {"run_id": run.parent_run_id, "outputs": str(project / settings.outputs_dir),
               "model": version, "features": features, "audit": audit,
               "head": head, "finetune": finetune, "test_accuracy": evaluation["accuracy"],
               "test_macro_f1": evaluation["macro_f1"],
               "small_test_split": evaluation["small_test_split"], "promotion": promotion,
               "uncommitted": run_tags[tags.GIT_CHANGED]
               if run_tags[tags.GIT_DIRTY] == "true" else None}
    # Named for the UI: the promotion's verdict, or Registered when the gate did not run.
    return Completed(name=promotion["verdict"].title() if promotion else "Registered",
                     data=summary)
