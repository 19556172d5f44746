from __future__ import annotations

import subprocess

from mlflow.tracking import MlflowClient

from tlpipe import tags
from tlpipe.config import TrackingConfig
from tlpipe.ops import tracking


def _context(tmp_path):
    experiment = tracking.configure(TrackingConfig(), tmp_path)
    parent = tracking.start_parent_run(experiment, "t", {})
    return tracking.RunContext(experiment, parent, tracking.tracking_uri(TrackingConfig(),
                                                                         tmp_path))


def test_store_lives_inside_the_project(tmp_path):
    tracking.configure(TrackingConfig(), tmp_path)
    assert (tmp_path / "mlflow" / "mlflow.db").is_file()
    assert (tmp_path / "mlflow" / "artifacts").is_dir()


def test_a_retried_stage_reuses_its_child_run(tmp_path):
    context = _context(tmp_path)
    first = tracking.child_run_id(context, "features")
    again = tracking.child_run_id(context, "features")
    other = tracking.child_run_id(context, "head")
    assert first == again != other
    run = MlflowClient().get_run(first)
    assert run.data.tags["mlflow.parentRunId"] == context.parent_run_id


def test_a_failing_stage_is_marked_failed_with_its_reason(tmp_path):
    context = _context(tmp_path)
    try:
        with tracking.stage_run(context, "head"):
            raise ValueError("head.lr: too high")
    except ValueError:
        pass
    run = MlflowClient().get_run(tracking.child_run_id(context, "head"))
    assert run.data.tags["failure_reason"] == "ValueError: head.lr: too high"


def test_runs_of_killed_processes_are_marked_failed_by_the_next_run(tmp_path):
    context = _context(tmp_path)
    stage = tracking.child_run_id(context, "features")  # RUNNING, as a kill leaves it
    ended = subprocess.Popen(["true"])
    ended.wait()
    client = MlflowClient()
    client.set_tag(context.parent_run_id, tags.PID, str(ended.pid))
    assert tracking.mark_abandoned_runs(context.experiment_id) == [context.parent_run_id,
                                                                   stage]
    for run_id in (context.parent_run_id, stage):
        run = client.get_run(run_id)
        assert run.info.status == "FAILED" and "killed" in run.data.tags["failure_reason"]


def test_the_experiment_is_marked_as_model_training_unless_someone_chose_a_kind(tmp_path):
    # The kind MLflow 3 gives model-training experiments, as opposed to GenAI ones.
    experiment = tracking.configure(TrackingConfig(), tmp_path)
    client = MlflowClient()

    def kind() -> str | None:
        return client.get_experiment(experiment).tags.get(tags.EXPERIMENT_KIND)

    assert kind() == "custom_model_development"
    client.delete_experiment_tag(experiment, tags.EXPERIMENT_KIND)  # as an older tlpipe left it
    tracking.configure(TrackingConfig(), tmp_path)
    assert kind() == "custom_model_development"
    client.set_experiment_tag(experiment, tags.EXPERIMENT_KIND, "genai_development")
    tracking.configure(TrackingConfig(), tmp_path)
    assert kind() == "genai_development"
