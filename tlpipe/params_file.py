"""Reading the settings: ``params.yaml``, ``--set KEY=VALUE`` overrides, and messages that
name the key that is wrong."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from tlpipe.config import Params
from tlpipe.errors import SettingsError


class ConfigError(SettingsError):
    """A params file that cannot be used, with the offending key in the message."""


def _describe(error: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid settings"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key; check its spelling against params.yaml's documented keys"
        lines.append(f"  {key}: {message} (got {item.get('input')!r})")
    return "\n".join(lines)


def parse_params(raw: dict, source: str = "params") -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_describe(error, source)) from None


def load_params(path: str | Path = "params.yaml", overrides: dict | None = None) -> Params:
    """Load and validate ``path``; ``overrides`` are deep-merged on top (for the CLI and tests)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found; pass --params PATH or create it")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: must hold a mapping of sections, got {type(raw).__name__}")
    return parse_params(deep_merge(raw, overrides or {}), str(path))


def overrides_from(pairs: list[str] | None) -> dict:
    """``KEY=VALUE`` pairs (``--set head.lr=0.001``; values read as YAML) as the nested
    mapping ``load_params`` merges on top of the file."""
    overrides: dict = {}
    for pair in pairs or []:
        key, separator, value = pair.partition("=")
        if not separator or not key:
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE, e.g. head.lr=0.001")
        node = overrides
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return overrides


def deep_merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
