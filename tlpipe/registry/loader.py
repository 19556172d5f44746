"""The one way to load a registered model: resolved by URI, downloaded, checked against the
digests recorded at registration (``registry.integrity``), then loaded from the checked copy.

`tlpipe predict`, `export` and `verify`, promotion's re-scoring and the served model's copy
all come through here, so nothing unverified is ever loaded: loading a pyfunc runs code from
the artifact store.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient

from tlpipe.errors import TlpipeError
from tlpipe.registry.integrity import download_verified

# Where the classifier's files sit inside a registered tlpipe pyfunc.
SPEC_GLOB = "artifacts/*/model.json"


class ModelNotFound(TlpipeError):
    """A model URI the registry does not know."""


def resolve_version(model_uri: str) -> ModelVersion:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` to the registry's model version."""
    match = re.fullmatch(r"models:/([^/@]+)(?:@([^/]+)|/(\d+))", model_uri)
    if not match:
        raise ModelNotFound(f"{model_uri!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    name, alias, version = match.groups()
    client = MlflowClient()
    try:
        if alias:
            return client.get_model_version_by_alias(name, alias)
        return client.get_model_version(name, version)
    except Exception as error:
        raise ModelNotFound(f"{model_uri}: not in the registry ({error})") from None


def model_uri(name: str, version: int | str | None = None, alias: str | None = None) -> str:
    """The URI of a version by number, else by alias."""
    return f"models:/{name}/{version}" if version is not None else f"models:/{name}@{alias}"


@contextlib.contextmanager
def verified_copy(version: ModelVersion) -> Iterator[Path]:
    """A temporary, verified copy of the registered version's files, for the block."""
    with tempfile.TemporaryDirectory(prefix="tlpipe-model-") as folder:
        yield download_verified(version.name, str(version.version), Path(folder))


def copy_verified_to(version: ModelVersion, destination: Path) -> Path:
    """Leave a verified copy in ``destination`` (new or empty), e.g. for `mlflow models serve`.
    Downloaded beside it and renamed into place once verified: only a verified copy ever
    appears there."""
    staging = destination.parent / f".{destination.name}.verifying-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        download_verified(version.name, str(version.version), staging)
        os.replace(staging, destination)  # onto an empty folder too
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return destination


def load_version(name: str, version: str):
    """The classifier inside a registered tlpipe pyfunc, and its spec, from a verified copy:
    safetensors and JSON, no pickle."""
    from tlpipe.training.model import load_classifier  # torch: only when a model is loaded

    with tempfile.TemporaryDirectory(prefix="tlpipe-model-") as folder:
        local = download_verified(name, str(version), Path(folder))
        spec = next(local.glob(SPEC_GLOB), None)
        if spec is None:
            raise ModelNotFound(f"models:/{name}/{version} is not a tlpipe model (no {SPEC_GLOB})")
        return load_classifier(spec.parent)


@contextlib.contextmanager
def loaded_pyfunc(version: ModelVersion, model_config: dict | None = None) -> Iterator[object]:
    """The registered version as MLflow loads it for serving (its pyfunc), from a verified
    copy that lasts as long as the block."""
    import mlflow.pyfunc

    with verified_copy(version) as local:
        try:
            model = mlflow.pyfunc.load_model(str(local), model_config=model_config)
        except Exception as error:  # MLflow's many ways to fail, said in one line
            raise ModelNotFound(f"models:/{version.name}/{version.version} cannot be loaded: "
                                f"{type(error).__name__}: {error}") from None
        yield model
