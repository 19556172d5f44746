"""One Prefect task per stage of ``tlpipe.pipeline``, named as the stage.

Each wraps the stage module's ``run`` (the stage inside its MLflow child run, the same code the
DVC stages run) and adds what is Prefect's: a name, and retries where a failure can be
transient. ``stage.head`` is the task of ``tlpipe/stages/head.py``.
"""

from __future__ import annotations

from types import SimpleNamespace

from tlpipe.pipeline import STAGES
from tlpipe.stages import features
from tlpipe.tasks.common import IO_RETRIES, step_task

stage = SimpleNamespace(**{
    entry.name: step_task(entry.module.run, entry.name,
                          **(IO_RETRIES if entry.retry_transient else {}))
    for entry in STAGES})

# One part of the feature cache, when features.shards asks for several task runs.
features_shard = step_task(features.fill_shard, "features_shard")
