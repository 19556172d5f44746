"""The training flow: validate the images, learn from them, evaluate, register, promote."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, unmapped
from prefect.runtime import flow_run

from flows.promote import promote_flow
from tasks.stages import features_shard, stage
from tlpipe import tags
from tlpipe.config import Params
from tlpipe.lineage import lineage_tags
from tlpipe.paths import data_root
from tlpipe.tracking import pipeline_run


@flow(name="tlpipe-train", log_prints=True)
def train_flow(params: Params, project_dir: str = ".") -> dict:
    """Validate the data, extract cached features, train the head, fine-tune, evaluate on the
    held-out test split, register the model as the challenger, then let the promotion gate
    decide whether it becomes champion. Each step is ``tlpipe/stages/<name>.py``."""
    project = Path(project_dir).resolve()
    run_tags = {tags.PARAMS_HASH: params.digest(), tags.BACKBONE: params.backbone.name,
                tags.PREFECT_FLOW_RUN_ID: str(flow_run.get_id()), tags.TRIGGER: "flow",
                **lineage_tags(project, data_root(params, project))}
    with pipeline_run(params.tracking, project, "train", run_tags) as run:
        stage.manifest(run, params, project)
        stage.validate(run, params, project)
        stage.augment(run, params, project)
        if params.features.shards > 1:  # the cache filled part by part, then read whole
            features_shard.map(unmapped(params), unmapped(project),
                               range(params.features.shards)).result()
        features = stage.features(run, params, project)
        head = stage.head(run, params, project)
        finetune = stage.finetune(run, params, project)
        evaluation = stage.evaluate(run, params, project)
        version = stage.register(run, params, project)
    # After the training run is closed, so a refused promotion never marks training FAILED.
    promotion = (promote_flow(params, project_dir, version=str(version["version"]))
                 if params.promotion.after_training else None)
    return {"run_id": run.parent_run_id, "model": version, "features": features,
            "head": head, "finetune": finetune, "test_accuracy": evaluation["accuracy"],
            "test_macro_f1": evaluation["macro_f1"],
            "small_test_split": evaluation["small_test_split"], "promotion": promotion}
