"""The retrain flow: if the data changed since the champion was trained, train on it and let
the promotion gate decide; otherwise record that there was nothing new."""

from __future__ import annotations

from pathlib import Path

from mlflow.entities import RunTag
from mlflow.tracking import MlflowClient
from prefect import flow
from prefect.runtime import flow_run
from prefect.states import Completed

from flows.promote import promote_flow
from flows.train import train_flow
from tasks.retrain import notify, registered_state, version_data
from tlpipe.config import Params, load_params
from tlpipe.retrain import NotifyError, Outcome, outcome_of_decision, plan_retrain
from tlpipe.tracking import KIND_TAG, configure, finishing, start_parent_run


@flow(name="tlpipe-retrain", log_prints=True)
def retrain_flow(project_dir: str = ".", params_file: str = "params.yaml", force: bool = False,
                 overrides: dict | None = None):
    """Version the data with DVC; when it is new to the registry (or ``force``), run the
    training flow and then the promotion flow. Every outcome (skipped, promoted, refused,
    failed) ends as this flow run's state and as an MLflow run of kind ``retrain``, and is
    posted to ``retrain.notify_url`` when one is set."""
    project = Path(project_dir).resolve()
    params = load_params(project / params_file, overrides)
    experiment_id = configure(params.tracking, project)
    outcome = Outcome("failed", "", params.registry.model_name,
                      prefect_flow_run_id=str(flow_run.get_id()))
    outcome.retrain_run_id = start_parent_run(experiment_id, "retrain", {
        KIND_TAG: "retrain", "prefect_flow_run_id": outcome.prefect_flow_run_id,
        "retrain.force": str(force).lower()})
    with finishing(outcome.retrain_run_id):
        try:
            _retrain(params, project, force, outcome)
        except BaseException as error:
            outcome.outcome, outcome.reason = "failed", f"{type(error).__name__}: {error}"
            raise
        finally:
            MlflowClient().log_batch(outcome.retrain_run_id, tags=[
                RunTag(key, value) for key, value in outcome.tags().items()])
            _tell(params, outcome)
    print(f"retrain: {outcome.outcome.upper()}: {outcome.reason}")
    return Completed(name=outcome.outcome.title(), message=outcome.reason,
                     data=outcome.to_dict())


def _retrain(params: Params, project: Path, force: bool, outcome: Outcome) -> None:
    data = version_data(params, project)
    outcome.data_md5 = data.md5
    champion, newest = registered_state(params.registry)
    plan = plan_retrain(data.md5, champion, newest, force)
    outcome.champion = champion.version if champion else None
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
