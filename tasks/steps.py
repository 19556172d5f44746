"""One Prefect task per pipeline step.

Each wraps the tracked step from ``tlpipe.tracked`` (the step plus its MLflow child run, the
same code the DVC stages run) and adds what is Prefect's: a name, retries where a failure can
be transient. Prefect's result cache is not used: the library's content-addressed caches
(features per image, fine-tuning checkpoints keyed by every input) also serve partial hits,
the CLI and the DVC stages, and outputs live at fixed paths that a cached result could not
vouch for.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.common import transient_only
from tlpipe import tracked
from tlpipe.config import Params
from tlpipe.tracking import RunContext

_IO_RETRIES = {"retries": 2, "retry_delay_seconds": 3, "retry_condition_fn": transient_only}


@task(name="build-manifest", cache_policy=NO_CACHE, **_IO_RETRIES)
def build_manifest(context: RunContext, params: Params, project: Path) -> dict:
    return tracked.manifest(context, params, project)


@task(name="validate-data", cache_policy=NO_CACHE)
def validate_data(context: RunContext, params: Params, project: Path) -> dict:
    return tracked.validate(context, params, project)


@task(name="preview-augmentation", cache_policy=NO_CACHE)
def preview_augmentation(context: RunContext, params: Params, project: Path) -> dict:
    return tracked.preview(context, params, project)


@task(name="extract-features", cache_policy=NO_CACHE)
def extract_features(context: RunContext, params: Params, project: Path) -> dict:
    return tracked.features(context, params, project)


@task(name="train-head", cache_policy=NO_CACHE)
def train_head(context: RunContext, params: Params, project: Path) -> dict:
    return tracked.head(context, params, project)


@task(name="finetune", cache_policy=NO_CACHE)
def finetune(context: RunContext, params: Params, project: Path) -> dict:
    """Resumes from the last epoch checkpoint when an earlier attempt was interrupted."""
    return tracked.finetune(context, params, project)


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate(context: RunContext, params: Params, project: Path) -> dict:
    return tracked.evaluate(context, params, project)


@task(name="register-model", cache_policy=NO_CACHE, **_IO_RETRIES)
def register_model(context: RunContext, params: Params, project: Path, facts: dict) -> dict:
    return tracked.register(context, params, project, facts)
