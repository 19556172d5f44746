"""Prefect tasks over the model registry that are not part of a stage."""

from __future__ import annotations

from tlpipe.registry import versions
from tlpipe.tasks.common import IO_RETRIES, step_task

# Before any feature is computed: data with other classes never joins this model.
check_same_classes = step_task(versions.check_same_classes, **IO_RETRIES)
