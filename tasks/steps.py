"""One Prefect task per training step.

Each wraps the tracked step from ``tlpipe.tracked`` (the step plus its MLflow child run, the
same code the DVC stages run) and adds what is Prefect's: a name, and retries where a failure
can be transient.
"""

from __future__ import annotations

from tasks.common import IO_RETRIES, step_task
from tlpipe import steps, tracked

build_manifest = step_task("build-manifest", tracked.manifest, **IO_RETRIES)
validate_data = step_task("validate-data", tracked.validate)
preview_augmentation = step_task("preview-augmentation", tracked.preview)
# One part of the feature cache, when features.shards asks for several task runs.
extract_feature_shard = step_task("extract-feature-shard", steps.extract_shard)
extract_features = step_task("extract-features", tracked.features)
train_head = step_task("train-head", tracked.head)
# Resumes from the last epoch checkpoint when an earlier attempt was interrupted.
finetune = step_task("finetune", tracked.finetune)
evaluate = step_task("evaluate", tracked.evaluate)
register_model = step_task("register-model", tracked.register, **IO_RETRIES)
