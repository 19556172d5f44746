"""One Prefect task per pipeline step.

Each wraps the tracked step from ``tlpipe.tracked`` (the step plus its MLflow child run, the
same code the DVC stages run) and adds what is Prefect's: a name, and retries where a failure
can be transient. Prefect's result cache is not used: the library's content-addressed caches
(features per image, fine-tuning checkpoints keyed by every input) also serve partial hits,
the CLI and the DVC stages, and outputs live at fixed paths that a cached result could not
vouch for.
"""

from __future__ import annotations

from collections.abc import Callable

from prefect import Task, task
from prefect.cache_policies import NO_CACHE

from tasks.common import transient_only
from tlpipe import tracked

_IO_RETRIES = {"retries": 2, "retry_delay_seconds": 3, "retry_condition_fn": transient_only}


def _step_task(name: str, step: Callable, **options) -> Task:
    return task(step, name=name, cache_policy=NO_CACHE, **options)


build_manifest = _step_task("build-manifest", tracked.manifest, **_IO_RETRIES)
validate_data = _step_task("validate-data", tracked.validate)
preview_augmentation = _step_task("preview-augmentation", tracked.preview)
extract_features = _step_task("extract-features", tracked.features)
train_head = _step_task("train-head", tracked.head)
# Resumes from the last epoch checkpoint when an earlier attempt was interrupted.
finetune = _step_task("finetune", tracked.finetune)
evaluate = _step_task("evaluate", tracked.evaluate)
register_model = _step_task("register-model", tracked.register, **_IO_RETRIES)
