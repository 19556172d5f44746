"""Prefect tasks of the retrain flow: each wraps one function of ``tlpipe.promotion.retrain``."""

from __future__ import annotations

from tlpipe.promotion import retrain
from tlpipe.tasks.common import IO_RETRIES, step_task

current_data_version = step_task(retrain.current_data_version, **IO_RETRIES)
registered_state = step_task(retrain.registered_state, **IO_RETRIES)
check_drift = step_task(retrain.check_drift)
notify = step_task(retrain.notify, retries=2, retry_delay_seconds=2)
