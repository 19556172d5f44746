"""What the registry holds about a model: its versions, aliases and classes.

Read-only and light (MLflow's client, no torch): `tlpipe models` and the checks that run before
training import this, not the modules that load models.
"""

from __future__ import annotations

import json

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tlpipe import tags
from tlpipe.config import RegistryConfig
from tlpipe.errors import SettingsError

_MISSING = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


class ModelIdentityError(SettingsError):
    """Data whose classes are not the classes of the registered model it would join."""


def alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as error:
        if error.error_code in _MISSING:
            return None
        raise


def registered_classes(client: MlflowClient, name: str) -> list[str] | None:
    """The classes of registered model ``name``, or None when there is no such model."""
    try:
        model = client.get_registered_model(name)
    except MlflowException as error:
        if error.error_code in _MISSING:
            return None
        raise
    if tags.CLASSES in model.tags:
        return json.loads(model.tags[tags.CLASSES])
    # Registered before the tag existed: the newest version's signature names the classes.
    from mlflow.models import get_model_info

    newest = max((int(v.version) for v in client.search_model_versions(f"name = '{name}'")),
                 default=None)
    if newest is None:
        return None
    outputs = get_model_info(f"models:/{name}/{newest}").signature.outputs.input_names()
    return [column.removeprefix("prob_") for column in outputs if column.startswith("prob_")]


def check_same_classes(registry: RegistryConfig, classes: list[str]) -> None:
    """Refuse data whose classes differ from the registered model's: a model's classes are
    part of what it is, and a version with other classes would replace it silently."""
    registered = registered_classes(MlflowClient(), registry.model_name)
    if registered is None or sorted(registered) == sorted(classes):
        return
    raise ModelIdentityError(
        f"registry.model_name {registry.model_name!r} is a model of the classes "
        f"{sorted(registered)}, but the data has the classes {sorted(classes)}. Nothing was "
        "trained. Give this data its own model (registry.model_name in params.yaml, or "
        "--set registry.model_name=NAME), or its own project: `tlpipe init DIR --data FOLDER`.")


def record_classes(client: MlflowClient, name: str, classes: list[str]) -> None:
    client.set_registered_model_tag(name, tags.CLASSES, json.dumps(sorted(classes)))


def version_rows(registry: RegistryConfig) -> list[dict[str, str]]:
    """One row per version, newest first: aliases, metrics at training, data, verdict."""
    client = MlflowClient()
    versions = client.search_model_versions(f"name = '{registry.model_name}'")
    aliases: dict[str, list[str]] = {}
    if versions:  # search results carry no aliases; the registered model has them all
        for alias, version in client.get_registered_model(registry.model_name).aliases.items():
            aliases.setdefault(str(version), []).append(alias)
    rows = []
    for version in sorted(versions, key=lambda v: int(v.version), reverse=True):
        version_tags = version.tags
        verdict = version_tags.get(tags.VERDICT, "-")
        if tags.ROLLED_BACK_BY in version_tags:
            verdict += " (rolled back)"
        if tags.ARTIFACTS_SHA256 not in version_tags:  # its registration was cut short
            verdict = "incomplete: no digest (registration cut short), not loadable"
        rows.append({
            "version": str(version.version),
            "aliases": ", ".join(sorted(aliases.get(str(version.version), []))) or "-",
            "accuracy": version_tags.get("test_accuracy", "-"),
            "macro_f1": version_tags.get("test_macro_f1", "-"),
            "data": version_tags.get(tags.DATA_DVC_MD5,
                                     version_tags.get(tags.DATA_FINGERPRINT, "-"))[:12],
            "commit": version_tags.get(tags.GIT_COMMIT, "-")[:8],
            "verdict": verdict,
            "decision": version_tags.get(tags.SUMMARY, ""),
        })
    return rows
