"""Alias moves that survive a kill: a decision records its intent before anything moves.

A promotion or rollback changes several registry entries (the champion and previous aliases,
the champion history tag, the promotion tags of its versions), and MLflow cannot change them
in one transaction. So before the first change, the decision logs the state before and after
to its run (``intent.json``) and tags the registered model with a pending marker naming that
run. If the process dies or the registry stops answering part-way, the marker stays, and
whoever next holds the promotion lock (a promotion, a rollback, `tlpipe models`) finishes the
job: forward to the state after, or back to the state before when the failing process had
already chosen to undo. Writing a state is idempotent, so finishing twice does no harm.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from dataclasses import asdict, dataclass

import mlflow
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tlpipe import tags
from tlpipe.config import PromotionConfig, RegistryConfig

INTENT_FILE = "intent.json"
FORWARD, BACK = "forward", "back"


@dataclass
class RegistryState:
    """What a decision changes, read or to be written as a whole."""

    aliases: dict[str, str | None]           # alias -> version; None: the alias is not set
    history: list[str]                       # the champions in order, newest last
    version_tags: dict[str, dict[str, str]]  # version -> its ``promotion.*`` tags


def read_state(client: MlflowClient, name: str, aliases: list[str], versions: list[str]
               ) -> RegistryState:
    model = client.get_registered_model(name)
    held = {alias: str(version) for alias, version in model.aliases.items()}
    return RegistryState({alias: held.get(alias) for alias in aliases},
                         json.loads(model.tags.get(tags.CHAMPION_HISTORY, "[]")),
                         {v: _promotion_tags(client, name, v) for v in versions})


def _promotion_tags(client: MlflowClient, name: str, version: str) -> dict[str, str]:
    return {key: value for key, value in client.get_model_version(name, version).tags.items()
            if key.startswith(tags.PROMOTION_PREFIX)}


def write_state(client: MlflowClient, name: str, state: RegistryState) -> None:
    """Make the registry hold ``state``, changing only what differs."""
    current = read_state(client, name, list(state.aliases), list(state.version_tags))
    changed = [a for a, v in state.aliases.items() if current.aliases[a] != v]
    # An alias whose version another alias is about to take moves first, so no two aliases
    # ever hold one version on the way (a rollback takes the champion from `previous`).
    wanted = {state.aliases[a] for a in changed}
    for alias in sorted(changed, key=lambda a: current.aliases[a] not in wanted):
        if state.aliases[alias] is None:
            client.delete_registered_model_alias(name, alias)
        else:
            client.set_registered_model_alias(name, alias, state.aliases[alias])
    if current.history != state.history:
        client.set_registered_model_tag(name, tags.CHAMPION_HISTORY, json.dumps(state.history))
    for version, wanted_tags in state.version_tags.items():
        now = current.version_tags[version]
        for key in now.keys() - wanted_tags.keys():
            client.delete_model_version_tag(name, version, key)
        for key, value in wanted_tags.items():
            if now.get(key) != value:
                client.set_model_version_tag(name, version, key, value)


def move(client: MlflowClient, name: str, run_id: str, before: RegistryState,
         after: RegistryState) -> None:
    """Record the intent in run ``run_id``, then move from ``before`` to ``after``. On any
    failure go back to ``before``; what cannot be done now is left for `finish_pending`."""
    client.log_dict(run_id, {"before": asdict(before), "after": asdict(after)}, INTENT_FILE)
    _mark_pending(client, name, run_id, FORWARD)
    try:
        write_state(client, name, after)
    except BaseException:
        with contextlib.suppress(MlflowException):  # the original error matters more
            _mark_pending(client, name, run_id, BACK)
            write_state(client, name, before)
            client.delete_registered_model_tag(name, tags.PENDING_DECISION)
        raise
    client.delete_registered_model_tag(name, tags.PENDING_DECISION)


def _mark_pending(client: MlflowClient, name: str, run_id: str, direction: str) -> None:
    client.set_registered_model_tag(name, tags.PENDING_DECISION,
                                    json.dumps({"run_id": run_id, "direction": direction}))


def pending_move(client: MlflowClient, name: str) -> dict | None:
    """The unfinished move of registered model ``name`` (run id and direction), if any."""
    try:
        marker = client.get_registered_model(name).tags.get(tags.PENDING_DECISION)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    return json.loads(marker) if marker else None


def finish_pending(client: MlflowClient, name: str) -> str | None:
    """Complete or undo a decision that a dead process (or a registry outage) left part-way,
    and end its run accordingly. Call it holding the promotion lock. Returns what was done."""
    pending = pending_move(client, name)
    if pending is None:
        return None
    run_id, forward = pending["run_id"], pending["direction"] == FORWARD
    intent = mlflow.artifacts.load_dict(f"runs:/{run_id}/{INTENT_FILE}")
    write_state(client, name, RegistryState(**intent["after" if forward else "before"]))
    done = "completed" if forward else "undone"
    client.set_tag(run_id, tags.FINISHED_BY,
                   f"{done} by {socket.gethostname()}:{os.getpid()} after its process stopped")
    client.set_terminated(run_id, RunStatus.to_string(
        RunStatus.FINISHED if forward else RunStatus.FAILED))
    client.delete_registered_model_tag(name, tags.PENDING_DECISION)
    return f"{name}: the unfinished decision of run {run_id} was {done}"


def finish_unfinished_decision(registry: RegistryConfig) -> str | None:
    """Complete or undo an alias move a dead process left part-way (hold the lock)."""
    return finish_pending(MlflowClient(), registry.model_name)


def finish_pending_under_lock(registry: RegistryConfig, promotion: PromotionConfig) -> str | None:
    """For a reader (`tlpipe models`): finish a move a killed promotion left part-way, unless
    a promotion holds the lock right now (it will finish it itself). Says what happened."""
    from tlpipe.promotion.lock import LockTimeout, registry_lock

    if pending_move(MlflowClient(), registry.model_name) is None:
        return None  # the usual case: read-only, no lock taken
    try:
        with registry_lock(registry.model_name, 2, promotion.lock_expiry_s):
            return finish_unfinished_decision(registry)
    except LockTimeout:
        return "a promotion is running: the aliases may be about to change"
