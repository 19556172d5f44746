"""Reading the settings: ``params.yaml``, ``--set KEY=VALUE`` overrides, and messages that
name the key that is wrong."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from tlpipe.config import Params
from tlpipe.errors import SettingsError

# Settings are a few kilobytes: anything far larger is a mistake or an attack (a YAML "billion
# laughs" of nested aliases, a data dump pasted into a key), refused before it is validated.
MAX_PARAMS_BYTES = 1_000_000
MAX_SETTINGS_VALUES = 100_000  # counted with every alias expanded
SHOWN_INPUT_CHARS = 200


class ConfigError(SettingsError):
    """A params file that cannot be used, with the offending key in the message."""


def _describe(error: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid settings"]
    for item in error.errors()[:20]:
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key; check its spelling against params.yaml's documented keys"
        shown = repr(item.get("input"))
        if len(shown) > SHOWN_INPUT_CHARS:
            shown = f"{shown[:SHOWN_INPUT_CHARS]}... ({len(shown)} characters)"
        lines.append(f"  {key}: {message} (got {shown})")
    return "\n".join(lines)


def _expanded_size(value: object, sizes: dict[int, int]) -> int:
    """How many values ``value`` holds once every YAML alias is expanded (each shared node
    is counted once per use, but computed once)."""
    if id(value) in sizes:
        return sizes[id(value)]
    children = (list(value.keys()) + list(value.values()) if isinstance(value, dict)
                else value if isinstance(value, list) else [])
    size = 1 + sum(_expanded_size(child, sizes) for child in children)
    sizes[id(value)] = size
    return size


def _read_yaml(text: str, source: str) -> object:
    if len(text.encode()) > MAX_PARAMS_BYTES:
        raise ConfigError(f"{source}: {len(text.encode())} bytes; settings files hold at most "
                          f"{MAX_PARAMS_BYTES}: keep data out of them")
    try:
        raw = yaml.safe_load(text)
        size = _expanded_size(raw, {})
    except yaml.YAMLError as error:
        raise ConfigError(f"{source}: not valid YAML: {error}") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply to be settings") from None
    if size > MAX_SETTINGS_VALUES:
        raise ConfigError(f"{source}: {size} values once its YAML aliases are expanded; "
                          f"settings hold at most {MAX_SETTINGS_VALUES}")
    return raw


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
    raw = _read_yaml(path.read_text(), str(path))
    if raw is None:
        raise ConfigError(f"{path}: empty; it should hold the settings (`tlpipe init --data "
                          "FOLDER` writes a documented one), or `{}` for every default")
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
        for depth, part in enumerate(parents):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                taken = ".".join(parents[:depth + 1])
                raise ConfigError(f"--set {pair!r}: {taken} is set to a value by another "
                                  f"--set, so it has no key {leaf!r}; set one or the other")
        node[leaf] = _read_yaml(value, f"--set {pair!r}")
    return overrides


def deep_merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
