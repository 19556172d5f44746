"""MLflow bookkeeping: the store, one parent run per pipeline run, one child per stage.

Children are created with the parent's run id through the client, never through the
``MLFLOW_RUN_ID`` environment variable, and found again by their stage tag, so a retried stage
reuses its run instead of adding a duplicate.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import traceback
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from pydantic import BaseModel

from tlpipe import tags
from tlpipe.config import TrackingConfig
from tlpipe.errors import TlpipeError

# mlflow.set_tracking_uri() writes MLFLOW_TRACKING_URI into the environment, so the user's
# own setting must be read before tlpipe sets anything.
_USER_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")


def tracking_uri(tracking: TrackingConfig, project_dir: Path) -> str:
    """``MLFLOW_TRACKING_URI`` wins; a relative SQLite path is taken from the project folder."""
    uri = _USER_TRACKING_URI or tracking.tracking_uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        database = (project_dir / uri.removeprefix(prefix)).resolve()
        database.parent.mkdir(parents=True, exist_ok=True)
        uri = prefix + str(database)
    return uri


class TrackingUnavailable(TlpipeError):
    """The MLflow tracking server does not answer."""


def unhealthy(server: str, timeout_s: float = 10) -> str | None:
    """Why ``server``'s ``/health`` does not answer within ``timeout_s``, or None if it does:
    a check that fails in seconds where a client's own retries take minutes."""
    try:
        urllib.request.urlopen(f"{server.rstrip('/')}/health", timeout=timeout_s).close()
    except (OSError, ValueError) as error:
        return str(error)
    return None


# A database store's port when its URI names none.
_DATABASE_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}


def _check_reachable(uri: str, timeout_s: float = 10) -> None:
    """Fail in seconds, naming the server: MLflow's own retries take minutes to give up, and
    a database host that drops packets holds a connection attempt for minutes."""
    parsed = urllib.parse.urlsplit(uri)
    database = parsed.scheme.split("+")[0]
    if database in _DATABASE_PORTS and parsed.hostname:
        address = (parsed.hostname, parsed.port or _DATABASE_PORTS[database])
        try:
            socket.create_connection(address, timeout=timeout_s).close()
        except OSError as error:  # the password stays out of the message
            raise TrackingUnavailable(
                f"the MLflow database {database}://{address[0]}:{address[1]} does not answer "
                f"within {timeout_s:g} s ({error}): start it, or unset MLFLOW_TRACKING_URI to "
                "use the project's own store (tracking.tracking_uri in params.yaml)") from None
        return
    why = unhealthy(uri, timeout_s) if uri.startswith(("http://", "https://")) else None
    if why:
        raise TrackingUnavailable(
            f"the MLflow tracking server {uri} does not answer ({why}): start it (`tlpipe "
            "stack up` for the team stack), or unset MLFLOW_TRACKING_URI to use the "
            "project's own store (tracking.tracking_uri in params.yaml)")


def configure(tracking: TrackingConfig, project_dir: Path) -> str:
    """Point MLflow at the store and return the experiment id (creating it if needed)."""
    uri = tracking_uri(tracking, project_dir)
    _check_reachable(uri)  # first: a store that does not answer is not made the current one
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    with _store_lock(uri):
        return _experiment_id(tracking, project_dir, uri)


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Two processes opening a new SQLite store at once both run its schema migrations
    (`_alembic_tmp_model_versions already exists`), and both may create the experiment:
    the first opening in each process is serialised on a lock file beside the database."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    with open(f"{uri.removeprefix('sqlite:///')}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _experiment_id(tracking: TrackingConfig, project_dir: Path, uri: str) -> str:
    client = MlflowClient()
    experiment = client.get_experiment_by_name(tracking.experiment)
    if experiment is not None:
        # One made by an older tlpipe has no kind yet; a kind someone chose stays.
        if tags.EXPERIMENT_KIND not in experiment.tags:
            client.set_experiment_tag(experiment.experiment_id, tags.EXPERIMENT_KIND,
                                      tags.MODEL_TRAINING)
        return experiment.experiment_id
    location = None
    if uri.startswith("sqlite:"):  # embedded store: artifacts beside it, inside the project
        artifacts = (project_dir / tracking.artifact_root).resolve()
        artifacts.mkdir(parents=True, exist_ok=True)
        location = artifacts.as_uri()
    return client.create_experiment(tracking.experiment, artifact_location=location,
                                    tags={tags.EXPERIMENT_KIND: tags.MODEL_TRAINING})


@dataclass(frozen=True)
class RunContext:
    """What a stage needs to attach its child run: plain strings, safe to hand to any task."""

    experiment_id: str
    parent_run_id: str
    tracking_uri: str


def start_parent_run(experiment_id: str, run_name: str, run_tags: dict[str, str]) -> str:
    client = MlflowClient()
    run = client.create_run(experiment_id, run_name=run_name, tags={
        tags.KIND: "pipeline", tags.PID: str(os.getpid()), tags.HOST: socket.gethostname(),
        **run_tags,
    })
    return run.info.run_id


def finish_run(run_id: str, error: BaseException | None = None) -> None:
    client = MlflowClient()
    if error is None:
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
        return
    reason = "".join(traceback.format_exception_only(type(error), error)).strip()
    client.set_tag(run_id, tags.FAILURE_REASON, reason[:4000])
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))


@contextlib.contextmanager
def finishing(run_id: str) -> Iterator[None]:
    """End ``run_id`` as the block ends: FINISHED, or FAILED with the reason on any error,
    KeyboardInterrupt and termination signals included."""
    try:
        yield
    except TrackingUnavailable:
        raise  # nothing can be recorded now; the next run marks this one FAILED
    except BaseException as error:
        down = _went_away(error)
        if down is not None:
            raise down from error
        finish_run(run_id, error)
        raise
    finish_run(run_id)


def _went_away(error: BaseException) -> TrackingUnavailable | None:
    """The tracking server stopped answering mid-run: one message saying so, at once, in place
    of MLflow's traceback and of more calls that would each wait out their retries."""
    if not isinstance(error, MlflowException):
        return None
    try:
        _check_reachable(mlflow.get_tracking_uri(), timeout_s=5)
    except TrackingUnavailable as down:
        return TrackingUnavailable(f"{down}. The run stopped; once the server answers, `tlpipe "
                                   "run` again reuses every stage that had finished")
    return None


def mark_abandoned_runs(experiment_id: str) -> list[str]:
    """Mark FAILED the pipeline runs of this host still RUNNING under a process that is gone.

    A run killed with SIGKILL cannot mark itself; the next run on the same host does it.
    """
    client, host, marked = MlflowClient(), socket.gethostname(), []
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'"):
        run_tags = run.data.tags
        if run_tags.get(tags.HOST) != host or not run_tags.get(tags.PID, "").isdigit():
            continue
        if not process_alive(int(run_tags[tags.PID])):
            reason = f"process {run_tags[tags.PID]} ended without finishing the run (killed)"
            # Its stage runs died with it: they carry no pid of their own.
            children = client.search_runs(
                [experiment_id], f"tags.`{tags.PARENT_RUN}` = '{run.info.run_id}' and "
                                 "attributes.status = 'RUNNING'")
            for dead in [run, *children]:
                client.set_tag(dead.info.run_id, tags.FAILURE_REASON, reason)
                client.set_terminated(dead.info.run_id, RunStatus.to_string(RunStatus.FAILED))
                marked.append(dead.info.run_id)
    return marked


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def child_run_id(context: RunContext, stage: str) -> str:
    """The parent's child run for ``stage``, created on first use and reused on retries."""
    mlflow.set_tracking_uri(context.tracking_uri)
    client = MlflowClient()
    existing = client.search_runs(
        [context.experiment_id],
        filter_string=f"tags.`{tags.PARENT_RUN}` = '{context.parent_run_id}' "
                      f"and tags.`{tags.STAGE}` = '{stage}'",
        max_results=1,
    )
    if existing:
        client.update_run(existing[0].info.run_id, status="RUNNING")
        return existing[0].info.run_id
    run = client.create_run(context.experiment_id, run_name=stage, tags={
        tags.PARENT_RUN: context.parent_run_id, tags.STAGE: stage, tags.KIND: "stage",
    })
    return run.info.run_id


@contextlib.contextmanager
def stage_run(context: RunContext, stage: str) -> Iterator[str]:
    """A child run for one stage, active in this thread, FAILED with the reason on error."""
    run_id = child_run_id(context, stage)
    with finishing(run_id), mlflow.start_run(run_id=run_id, nested=True,
                                             parent_run_id=context.parent_run_id,
                                             log_system_metrics=False):
        yield run_id


@contextlib.contextmanager
def pipeline_run(tracking: TrackingConfig, project_dir: Path, run_name: str,
                 run_tags: dict[str, str]) -> Iterator[RunContext]:
    """One parent run for a whole pipeline run: FINISHED on success, FAILED with the reason
    on any error, including KeyboardInterrupt and SystemExit from a termination signal."""
    experiment_id = configure(tracking, project_dir)
    mark_abandoned_runs(experiment_id)
    parent = start_parent_run(experiment_id, run_name, run_tags)
    with finishing(parent):
        yield RunContext(experiment_id, parent, mlflow.get_tracking_uri())


def session_run(tracking: TrackingConfig, project_dir: Path, session: str,
                run_tags: dict[str, str]) -> RunContext:
    """The parent run shared by every stage of one session (one ``dvc repro``), reopened."""
    experiment_id = configure(tracking, project_dir)
    client = MlflowClient()
    found = client.search_runs([experiment_id], f"tags.`{tags.SESSION}` = '{session}'",
                               max_results=1)
    if found:
        parent = found[0].info.run_id
        client.update_run(parent, status="RUNNING")
    else:
        mark_abandoned_runs(experiment_id)
        parent = start_parent_run(experiment_id, "dvc repro", {**run_tags, tags.SESSION: session})
    return RunContext(experiment_id, parent, mlflow.get_tracking_uri())


# --- what stages record in their child runs -------------------------------------------------

def flat_params(prefix: str, section: BaseModel) -> dict[str, str]:
    return {f"{prefix}.{key}": str(value) for key, value in section.model_dump(mode="json").items()}


def log_to_run_and_parent(context: RunContext, path: str | Path, folder: str | None = None
                          ) -> None:
    """Artifacts people look for first also go on the parent run, beside the headline metrics."""
    mlflow.log_artifact(str(path), folder)
    MlflowClient().log_artifact(context.parent_run_id, str(path), folder)


def log_history(history: list[dict], prefix: str) -> None:
    """Per-epoch records as metrics with the epoch as step: ``head_val_loss`` at step 3."""
    for record in history:
        mlflow.log_metrics({f"{prefix}_{k}": v for k, v in record.items() if k != "epoch"},
                           step=record["epoch"])
