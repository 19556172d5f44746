"""Logging the trained classifier to MLflow and registering it under an alias."""

from __future__ import annotations

import io
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, Schema
from mlflow.types.schema import AnyType

import tlpipe
from tlpipe.images import load_rgb
from tlpipe.model_io import load_classifier
from tlpipe.serving import IMAGE_COLUMN

_ENTRY = Path(tlpipe.__file__).parent / "pyfunc_entry.py"
# Explicit requirements skip MLflow's slow inference; tlpipe itself travels as code_paths.
_REQUIREMENTS = ["torch", "torchvision", "timm", "safetensors", "pillow", "pandas", "numpy",
                 "pydantic", "pyyaml", "mlflow"]


def signature_for(classes: list[str]) -> ModelSignature:
    outputs = [ColSpec("string", "label"), ColSpec("double", "probability")]
    outputs += [ColSpec("double", f"prob_{name}") for name in classes]
    return ModelSignature(inputs=Schema([ColSpec(AnyType(), IMAGE_COLUMN)]),
                          outputs=Schema(outputs))


def example_input(image_path: Path, side: int = 48) -> pd.DataFrame:
    """One small JPEG: enough to document the input without bloating the model's folder."""
    image = load_rgb(image_path)
    image.thumbnail((side, side))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return pd.DataFrame({IMAGE_COLUMN: [buffer.getvalue()]})


def log_and_register(model_dir: Path, model_name: str, alias: str, example_image: Path,
                     version_tags: dict[str, str]) -> ModelVersion:
    """Log the pyfunc in the active run, register a new version and point ``alias`` at it.

    Idempotent per run: a retry after a partial failure reuses the version this run created.
    """
    _, spec = load_classifier(model_dir)  # fails here, before anything is registered
    client = MlflowClient()
    run_id = mlflow.active_run().info.run_id
    existing = client.search_model_versions(f"name = '{model_name}' and run_id = '{run_id}'")
    if existing:
        version = str(existing[0].version)
    else:
        version = _log_new_version(model_dir, model_name, spec.classes, example_image)
    for key, value in version_tags.items():
        client.set_model_version_tag(model_name, version, key, str(value))
    client.set_registered_model_alias(model_name, alias, version)
    return client.get_model_version(model_name, version)


def _log_new_version(model_dir: Path, model_name: str, classes: list[str],
                     example_image: Path) -> str:
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=str(_ENTRY),
        artifacts={"model_dir": str(model_dir)},
        code_paths=[str(Path(tlpipe.__file__).parent)],
        signature=signature_for(classes),
        input_example=example_input(example_image),
        pip_requirements=_REQUIREMENTS,
        registered_model_name=model_name,
    )
    return str(info.registered_model_version)
