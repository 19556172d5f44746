"""A lock kept in the MLflow model registry itself, so it works with every MLflow backend.

Creating a registered model is atomic in every MLflow store (its name is unique in the
database behind the embedded SQLite store and behind a tracking server alike), so the lock is
a registered model named ``<model>.promotion-lock``: whoever creates it holds it, and
deleting it releases it. A lock whose holder died (same host, process gone) or that is older
than ``expiry_s`` is broken by the next caller. Only a model that carries the lock's marker
tag is ever deleted: a model of that name made by anyone else stops the promotion with an
error, and settings refuse such model names.
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

from tlpipe.config import PROMOTION_LOCK_SUFFIX
from tlpipe.errors import TlpipeError
from tlpipe.ops.tracking import process_alive

MARKER_TAG, MARKER = "tlpipe.lock", "promotion"


class LockTimeout(TlpipeError, TimeoutError):
    pass


class NotALock(TlpipeError):
    """A registered model has the lock's name but was not made by tlpipe as a lock."""


def lock_name(model_name: str) -> str:
    return model_name + PROMOTION_LOCK_SUFFIX


@contextlib.contextmanager
def registry_lock(model_name: str, wait_s: float, expiry_s: float,
                  poll_s: float = 0.5) -> Iterator[str]:
    """Hold the promotion lock of ``model_name`` for the block; yield the owner id."""
    client, name = MlflowClient(), lock_name(model_name)
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + wait_s
    while not _try_acquire(client, name, owner):
        _break_if_stale(client, name, expiry_s)
        if time.monotonic() > deadline:
            holder = _tags(client, name).get("owner", "unknown")
            raise LockTimeout(
                f"registered model {name!r} (the promotion lock) is held by {holder} for more "
                f"than promotion.lock_wait_s={wait_s:g}s; wait for that promotion to end, or "
                f"delete {name!r} in the MLflow registry if its process is gone")
        time.sleep(poll_s)
    try:
        yield owner
    finally:
        if _tags(client, name).get("owner") == owner:  # unless someone broke it as stale
            client.delete_registered_model(name)


def _try_acquire(client: MlflowClient, name: str, owner: str) -> bool:
    host, pid = socket.gethostname(), str(os.getpid())
    try:
        client.create_registered_model(
            name, description="Held while a tlpipe promotion runs; deleted when it ends.",
            tags={MARKER_TAG: MARKER, "owner": owner, "host": host, "pid": pid,
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


def _break_if_stale(client: MlflowClient, name: str, expiry_s: float) -> None:
    try:
        tags = dict(client.get_registered_model(name).tags)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return  # released meanwhile
        raise
    if tags.get(MARKER_TAG) != MARKER:
        raise NotALock(
            f"registered model {name!r} is in the way of the promotion lock: tlpipe locks "
            f"promotions of {name.removesuffix(PROMOTION_LOCK_SUFFIX)!r} under that name, and "
            f"this model was not made by tlpipe as a lock (no {MARKER_TAG!r} tag), so it is left "
            "as it is; rename or delete it in the MLflow registry, then promote again")
    age = time.time() - float(tags.get("acquired_at", 0))
    holder_gone = (tags.get("host") == socket.gethostname()
                   and tags.get("pid", "").isdigit() and not process_alive(int(tags["pid"])))
    # Re-read just before deleting, so a lock taken meanwhile by someone else survives.
    if (age > expiry_s or holder_gone) and _tags(client, name).get("owner") == tags.get("owner"):
        with contextlib.suppress(MlflowException):
            client.delete_registered_model(name)

