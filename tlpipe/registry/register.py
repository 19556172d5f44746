"""Logging the trained classifier to MLflow and registering it under an alias."""

from __future__ import annotations

import io
import json
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.entities import LoggedModelOutput
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, Schema
from mlflow.types.schema import AnyType

import tlpipe
from tlpipe import tags
from tlpipe.registry.integrity import record_digests
from tlpipe.serving import pyfunc
from tlpipe.serving.pyfunc import IMAGE_COLUMN
from tlpipe.training.model import ModelSpec, load_classifier
from tlpipe.vectors.images import load_rgb

_ENTRY = Path(pyfunc.__file__).with_name("pyfunc_entry.py")
# Explicit requirements skip MLflow's slow inference; tlpipe itself travels as code_paths.
# onnxruntime, onnx and onnxscript: the served model's backbone runs on onnxruntime on CPUs.
_REQUIREMENTS = ["torch", "torchvision", "timm", "safetensors", "pillow", "pandas", "numpy",
                 "pydantic", "pyyaml", "mlflow", "onnxruntime", "onnx", "onnxscript"]
# The longest description MLflow's SQL stores keep (a model card with many classes is longer).
_MAX_DESCRIPTION = 5000


def signature_for(classes: list[str], modality: str = "image") -> ModelSignature:
    outputs = [ColSpec("string", "label"), ColSpec("double", "probability")]
    outputs += [ColSpec("double", f"prob_{name}") for name in classes]
    # A text model's input is unnamed: MLflow then takes a list of strings, one string, or a
    # DataFrame whose text column is named anything ("text" by convention).
    inputs = ColSpec("string") if modality == "text" else ColSpec(AnyType(), IMAGE_COLUMN)
    return ModelSignature(inputs=Schema([inputs]), outputs=Schema(outputs))


def example_input(example: Path | str, side: int = 48) -> pd.DataFrame | list[str]:
    """One small JPEG (``example`` an image's path), or one text (``example`` a str): enough
    to document the input without bloating the model's folder."""
    if isinstance(example, str):
        return [example[:500]]
    image = load_rgb(example)
    image.thumbnail((side, side))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return pd.DataFrame({IMAGE_COLUMN: [buffer.getvalue()]})


def log_and_register(model_dir: Path, model_name: str, alias: str, example: Path | str,
                     version_tags: dict[str, str], *, run_id: str | None = None,
                     description: str = "", model_description: str = "") -> ModelVersion:
    """Log the pyfunc in the active run, register a new version and point ``alias`` at it.

    The version belongs to run ``run_id`` (default: the active run): MLflow's run page lists
    as "Registered models" the versions whose run id is its own. ``description`` (markdown)
    goes on the version, ``model_description`` on the registered model unless it has one.
    Idempotent per run: a retry after a partial failure reuses the version this run created.
    The version's files are hashed as stored and the digest kept as a version tag
    (``model_integrity``): loading refuses a version whose stored files differ.
    """
    _, spec = load_classifier(model_dir)  # fails here, before anything is registered
    client = MlflowClient()
    run_id = run_id or mlflow.active_run().info.run_id
    existing = client.search_model_versions(f"name = '{model_name}' and run_id = '{run_id}'")
    _describe_model(client, model_name, model_description[:_MAX_DESCRIPTION])
    if existing:
        version = str(existing[0].version)
        if tags.ARTIFACTS_SHA256 not in existing[0].tags:  # the retried run failed before it
            record_digests(client, model_name, version, run_id)
    else:
        version = _log_new_version(model_dir, model_name, spec, example, run_id,
                                   version_tags, description[:_MAX_DESCRIPTION])
    if description:
        client.update_model_version(model_name, version,
                                    description=description[:_MAX_DESCRIPTION])
    for key, value in version_tags.items():
        client.set_model_version_tag(model_name, version, key, str(value))
    client.set_registered_model_alias(model_name, alias, version)
    return client.get_model_version(model_name, version)


def _describe_model(client: MlflowClient, name: str, description: str) -> None:
    """Create registered model ``name`` if needed; describe it unless it has a description."""
    try:
        client.create_registered_model(name, description=description or None)
    except MlflowException as error:
        if error.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
        if description and not client.get_registered_model(name).description:
            client.update_registered_model(name, description=description)


def _log_new_version(model_dir: Path, model_name: str, spec: ModelSpec,
                     example: Path | str, run_id: str, version_tags: dict[str, str],
                     description: str) -> str:
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=str(_ENTRY),
        artifacts={"model_dir": str(model_dir)},
        code_paths=[str(Path(tlpipe.__file__).parent)],
        signature=signature_for(spec.classes, spec.modality),
        input_example=example_input(example),
        pip_requirements=_REQUIREMENTS,
        # The keys a loader may set (`tlpipe predict` passes the project's settings); MLflow
        # ignores, with a warning, any key the logged model does not declare. No device: a
        # server takes it from TLPIPE_DEVICE.
        model_config={"device": None, "features": {}},
    )
    # Registered here, not by log_model(registered_model_name=...): that would give the
    # version the logged model's source run (the active run), and only the run named by a
    # version's run id lists it under "Registered models".
    # Tags and description in the same call: a process killed right after still leaves a
    # version that says what it is (and, lacking its digest, one that loading refuses).
    client = MlflowClient()
    version = str(client.create_model_version(
        model_name, info.model_uri, run_id=run_id, model_id=info.model_id,
        tags={key: str(value) for key, value in version_tags.items()},
        description=description or None).version)
    # As log_model's registration does: the logged model's page lists its versions.
    client.set_logged_model_tags(info.model_id, {tags.MODEL_VERSIONS: json.dumps(
        [{"name": model_name, "version": version}])})
    if run_id != info.run_id:  # and the version's run lists the model among its outputs
        client.log_outputs(run_id, [LoggedModelOutput(info.model_id, step=0)])
    # What loading checks: the digests of every stored file, the code that runs included.
    record_digests(client, model_name, version, run_id)
    return version
