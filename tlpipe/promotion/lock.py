"""Locks kept in the MLflow model registry itself, so they work with every MLflow backend.

Creating a registered model is atomic in every MLflow store (its name is unique in the
database behind the embedded SQLite store and behind a tracking server alike), so a lock is
a registered model named ``<model>.<kind>-lock`` (kinds: promotion, retrain): whoever creates
it holds it, and deleting it releases it. A lock whose holder died (same host, process gone)
or that is older than ``expiry_s`` is broken by the next caller. Only a model that carries
the lock's marker tag is ever deleted: a model of that name made by anyone else stops the
caller with an error, and settings refuse such model names.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid
from collections.abc import Iterator

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tlpipe.config import LOCK_KINDS
from tlpipe.errors import TlpipeError
from tlpipe.ops.tracking import process_alive

MARKER_TAG = "tlpipe.lock"  # its value: the lock's kind


class LockTimeout(TlpipeError, TimeoutError):
    pass


class NotALock(TlpipeError):
    """A registered model has the lock's name but was not made by tlpipe as a lock."""


def lock_name(model_name: str, kind: str = "promotion") -> str:
    if kind not in LOCK_KINDS:
        raise ValueError(f"lock kind {kind!r}: not one of {LOCK_KINDS}")
    return f"{model_name}.{kind}-lock"


@contextlib.contextmanager
def registry_lock(model_name: str, wait_s: float, expiry_s: float, poll_s: float = 0.5,
                  kind: str = "promotion") -> Iterator[str]:
    """Hold the ``kind`` lock of ``model_name`` for the block; yield the owner id."""
    client, name = MlflowClient(), lock_name(model_name, kind)
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + wait_s
    while not _try_acquire(client, name, owner, kind):
        _break_if_stale(client, name, expiry_s, kind)
        if time.monotonic() > deadline:
            holder = _tags(client, name).get("owner", "unknown")
            raise LockTimeout(
                f"registered model {name!r} (the {kind} lock) is held by {holder} for more "
                f"than {wait_s:g}s (promotion.lock_wait_s for promotions); wait for that "
                f"{kind} to end, or delete {name!r} in the MLflow registry if its process is "
                "gone")
        time.sleep(poll_s)
    try:
        yield owner
    finally:
        if _tags(client, name).get("owner") == owner:  # unless someone broke it as stale
            client.delete_registered_model(name)


def _try_acquire(client: MlflowClient, name: str, owner: str, kind: str) -> bool:
    host, pid = socket.gethostname(), str(os.getpid())
    try:
        client.create_registered_model(
            name, description=f"Held while a tlpipe {kind} runs; deleted when it ends.",
            tags={MARKER_TAG: kind, "owner": owner, "host": host, "pid": pid,
                  "acquired_at": f"{time.time():.3f}"})
    except MlflowException as error:
        # RESOURCE_DOES_NOT_EXIST: the SQL store found the lock on insert, then it was
        # released before the store read it back to word its error. Held a moment ago.
        if error.error_code in ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST"):
            return False
        raise
    return True


def _tags(client: MlflowClient, name: str) -> dict[str, str]:
    try:
        return dict(client.get_registered_model(name).tags)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return {}
        raise


def _break_if_stale(client: MlflowClient, name: str, expiry_s: float, kind: str) -> None:
    try:
        tags = dict(client.get_registered_model(name).tags)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return  # released meanwhile
        raise
    if tags.get(MARKER_TAG) != kind:
        raise NotALock(
            f"registered model {name!r} is in the way of the {kind} lock: tlpipe locks each "
            f"{kind} of {name.removesuffix(f'.{kind}-lock')!r} under that name, and "
            f"this model was not made by tlpipe as a lock (no {MARKER_TAG!r} tag), so it is left "
            f"as it is; rename or delete it in the MLflow registry, then run the {kind} again")
    age = time.time() - float(tags.get("acquired_at", 0))
    holder_gone = (tags.get("host") == socket.gethostname()
                   and tags.get("pid", "").isdigit() and not process_alive(int(tags["pid"])))
    # Re-read just before deleting, so a lock taken meanwhile by someone else survives.
    if (age > expiry_s or holder_gone) and _tags(client, name).get("owner") == tags.get("owner"):
        with contextlib.suppress(MlflowException):
            client.delete_registered_model(name)

