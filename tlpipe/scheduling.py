"""Serving the retrain flow on a schedule, with runs that never overlap."""

from __future__ import annotations

from pathlib import Path

import psutil
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.deployments.runner import EntrypointType
from prefect.schedules import Cron, Interval

from flows.retrain import retrain_flow
from tlpipe.stack import stop_tree

DEPLOYMENT = "retrain"
# One retrain at a time per deployment; a tick that comes during a run is cancelled, not
# queued, so a slow retrain is never followed by a pile of stale ones.
ONE_AT_A_TIME = ConcurrencyLimitConfig(limit=1,
                                       collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)


def serve_retrain(project: Path, params_file: Path, cron: str | None = None,
                  interval: int | None = None, timezone: str = "UTC") -> None:
    """Serve until stopped; then stop what this process started as well (Prefect leaves the
    flow-run processes running when it is stopped with SIGTERM)."""
    when = Cron(cron, timezone=timezone) if cron else Interval(interval, timezone=timezone)
    try:
        retrain_flow.serve(
            name=DEPLOYMENT, schedules=[when], global_limit=ONE_AT_A_TIME, limit=1,
            parameters={"project_dir": str(project.resolve()), "params_file": str(params_file)},
            entrypoint_type=EntrypointType.MODULE_PATH,
        )
    finally:
        for child in psutil.Process().children():
            stop_tree(child.pid)
