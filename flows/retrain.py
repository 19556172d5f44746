"""The retrain flow: if the data changed since the champion was trained, train on it and let
the promotion gate decide; otherwise record that there was nothing new. ``serve_retrain`` runs
it on a schedule, with runs that never overlap."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import psutil
from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient
from prefect import flow
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.client.schemas.schedules import CronSchedule
from prefect.deployments.runner import EntrypointType
from prefect.runtime import flow_run
from prefect.schedules import Cron, Interval
from prefect.states import Completed
from pydantic import ValidationError

from tlpipe import tags
from tlpipe.config import Params
from tlpipe.flows.hooks import cancelled_when_stopped
from tlpipe.flows.promote import promote_flow
from tlpipe.flows.train import train_flow
from tlpipe.ops.processes import stop_tree
from tlpipe.ops.tracking import configure, finishing, start_parent_run
from tlpipe.params_file import load_params
from tlpipe.promotion.lock import LockTimeout, lock_name, registry_lock
from tlpipe.promotion.retrain import (
    NotifyError,
    Outcome,
    outcome_of_decision,
    plan_by_trigger,
    plan_retrain,
)
from tlpipe.tasks.retrain import check_drift, current_data_version, notify, registered_state


@flow(name="tlpipe-retrain", log_prints=True, on_crashed=[cancelled_when_stopped])
def retrain_flow(project_dir: str = ".", params_file: str = "params.yaml", force: bool = False,
                 overrides: dict | None = None):
    """Version the data with DVC; when it is new to the registry (or ``force``), and has
    drifted from the champion's training images if ``retrain.trigger`` is drift, run the
    training flow and then the promotion flow. Every outcome (skipped, promoted, refused,
    failed) ends as this flow run's state and as an MLflow run of kind ``retrain``, and is
    posted to ``retrain.notify_url`` when one is set."""
    project = Path(project_dir).resolve()
    params = load_params(project / params_file, overrides)
    experiment_id = configure(params.tracking, project)
    outcome = Outcome("failed", "", params.registry.model_name,
                      prefect_flow_run_id=str(flow_run.get_id()))
    outcome.retrain_run_id = start_parent_run(experiment_id, "retrain", {
        tags.KIND: "retrain", tags.PREFECT_FLOW_RUN_ID: outcome.prefect_flow_run_id,
        "retrain.force": str(force).lower()})
    with finishing(outcome.retrain_run_id):
        try:
            _retrain(params, project, force, outcome)
        except BaseException as error:
            outcome.outcome, outcome.reason = "failed", f"{type(error).__name__}: {error}"
            raise
        finally:
            now = int(time.time() * 1000)
            MlflowClient().log_batch(outcome.retrain_run_id, tags=[
                RunTag(key, value) for key, value in outcome.tags().items()], metrics=[
                Metric(key, value, now, 0) for key, value in outcome.metrics().items()])
            _tell(params, outcome)
    print(f"retrain: {outcome.outcome.upper()}: {outcome.reason}")
    return Completed(name=outcome.outcome.title(), message=outcome.reason,
                     data=outcome.to_dict())


def _retrain(params: Params, project: Path, force: bool, outcome: Outcome) -> None:
    """One retrain of a model at a time, wherever it was started: a second one started
    meanwhile (by hand beside a schedule, or on another host) does nothing and says so."""
    model = params.registry.model_name
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(registry_lock(model, 0, params.promotion.lock_expiry_s,
                                             kind="retrain"))
        except LockTimeout:
            outcome.outcome = "skipped"
            outcome.reason = (f"another retrain of {model} is running (its lock "
                              f"{lock_name(model, 'retrain')!r} is held); this one did nothing")
            return
        _retrain_unlocked(params, project, force, outcome)


def _retrain_unlocked(params: Params, project: Path, force: bool, outcome: Outcome) -> None:
    data = current_data_version(params, project)
    outcome.data_md5 = data.md5
    champion, newest = registered_state(params.registry)
    plan = plan_retrain(data.md5, champion, newest, force)
    outcome.champion = champion.version if champion else None
    if plan.retrain and champion is not None and not force:
        drift = check_drift(params, project, champion)
        outcome.drift = drift.to_dict()
        plan = plan_by_trigger(plan, drift, params.retrain)
    if not plan.retrain:
        outcome.outcome, outcome.reason = "skipped", plan.reason
        return
    print(f"retraining: {plan.reason}")
    training = train_flow(params, str(project))
    version = str(training["model"]["version"])
    decision = training["promotion"] or promote_flow(params, str(project), version=version)
    outcome.outcome = outcome_of_decision(decision)
    outcome.reason = f"{plan.reason}; v{version} {decision['verdict']}: {decision['reason']}"
    outcome.version, outcome.training_run_id = version, training["run_id"]
    outcome.decision_run_id = decision["run_id"]
    if outcome.outcome == "promoted":
        outcome.champion = version


def _tell(params: Params, outcome: Outcome) -> None:
    if params.retrain.notify_url is None:
        return
    try:
        notify(str(params.retrain.notify_url), outcome, params.retrain.notify_timeout_s)
    except NotifyError as error:  # a lost notification never changes the outcome
        print(f"notification not delivered: {error}")


DEPLOYMENT = "retrain"
# One retrain at a time per deployment; a tick that comes during a run is cancelled, not
# queued, so a slow retrain is never followed by a pile of stale ones.
ONE_AT_A_TIME = ConcurrencyLimitConfig(limit=1,
                                       collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)


def retrain_schedule(cron: str | None, interval: int | None, timezone: str = "UTC"
                     ) -> Cron | Interval:
    """The schedule, checked now (Prefect would check it only once a server is up): a bad
    cron string or time zone raises ValueError naming it."""
    if cron is None:
        return Interval(interval, timezone=timezone)
    try:
        CronSchedule(cron=cron, timezone=timezone)
    except ValidationError as error:
        raise ValueError("; ".join(e["msg"] for e in error.errors())) from None
    return Cron(cron, timezone=timezone)


def serve_retrain(project: Path, params_file: Path, when: Cron | Interval,
                  overrides: dict | None = None) -> None:
    """Serve until stopped; then stop what this process started as well (Prefect leaves the
    flow-run processes running when it is stopped with SIGTERM)."""
    try:
        retrain_flow.serve(
            name=DEPLOYMENT, schedules=[when], global_limit=ONE_AT_A_TIME, limit=1,
            parameters={"project_dir": str(project.resolve()), "params_file": str(params_file),
                        "overrides": overrides},
            entrypoint_type=EntrypointType.MODULE_PATH,
        )
    finally:
        for child in psutil.Process().children():
            stop_tree(child.pid)
