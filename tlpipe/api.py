"""A registered model in Python, in one line: ``tlpipe.load("ants-bees@champion")``.

The model is the registered pyfunc itself, from a verified copy (``registry.loader``), so it
answers exactly as `tlpipe predict` and `mlflow models serve` do.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from tlpipe.errors import TlpipeError


class Model:
    """A loaded model version: ``predict`` gives a table, ``predict_proba`` an array."""

    def __init__(self, uri: str, version, pyfunc, copy: tempfile.TemporaryDirectory):
        self.uri, self.name, self.version = uri, version.name, int(version.version)
        self.aliases = list(version.aliases)
        self._pyfunc, self._copy = pyfunc, copy  # the copy lasts as long as the model
        spec = pyfunc.unwrap_python_model().spec
        self.classes: list[str] = list(spec.classes)
        self.modality: str = spec.modality  # "image", or "text": predict then takes strings

    def __repr__(self) -> str:
        aliases = f" @{', @'.join(self.aliases)}" if self.aliases else ""
        return f"<tlpipe model {self.name} v{self.version}{aliases}: classes {self.classes}>"

    def predict(self, images: str | Path | Iterable[str | Path], batch_size: int = 32
                ) -> pd.DataFrame:
        """One row per image file (folders are searched): ``path``, ``label``,
        ``probability``, ``prob_<class>`` for every class, and ``error`` ("" when scored; an
        unreadable file gets its reason instead of stopping the others). A text model takes
        strings (the texts themselves; ``path`` is then ``text:<n>``) or ``Path`` objects of
        .txt files, folders of them and CSV or JSON Lines tables."""
        from tlpipe.serving.batch import image_files, predict_files, predict_texts

        given = [images] if isinstance(images, str | Path) else list(images)
        if self.modality == "text":
            return predict_texts(self._pyfunc, self._texts(given), batch_size)
        missing = [str(path) for path in given if not Path(path).exists()]
        if missing:
            raise FileNotFoundError(f"not found: {', '.join(missing)}")
        return predict_files(self._pyfunc, image_files([Path(path) for path in given]),
                             batch_size)

    @staticmethod
    def _texts(given: list[str | Path]) -> pd.DataFrame:
        from tlpipe.config import DataConfig, TextConfig
        from tlpipe.serving.batch import text_inputs

        parts = [text_inputs([item], DataConfig().text_column, TextConfig().max_bytes, [])
                 if isinstance(item, Path) else
                 pd.DataFrame({"path": [f"text:{index}"], "text": [item], "error": [""]})
                 for index, item in enumerate(given)]
        return pd.concat(parts, ignore_index=True)

    def predict_proba(self, images: str | Path | Iterable[str | Path], batch_size: int = 32
                      ) -> np.ndarray:
        """Probabilities, one row per image and one column per class (``classes``' order);
        raises ValueError naming the first file that cannot be read."""
        frame = self.predict(images, batch_size)
        failed = frame[frame["error"] != ""]
        if not failed.empty:
            raise ValueError(f"{failed['path'].iloc[0]}: {failed['error'].iloc[0]}")
        return frame[[f"prob_{name}" for name in self.classes]].to_numpy()


def load(model: str, project: str | Path = ".", device: str | None = None) -> Model:
    """``model``: ``NAME@ALIAS``, ``NAME/VERSION``, ``NAME`` (its champion) or a
    ``models:/`` URI. ``project``'s params.yaml (built-in defaults without one) says where the
    registry is and how to score; ``device`` overrides its ``device`` setting."""
    import mlflow.pyfunc

    from tlpipe.ops import tracking
    from tlpipe.ops.runtime import apply_runtime_defaults
    from tlpipe.params_file import load_params, parse_params
    from tlpipe.registry.loader import ModelNotFound, copy_verified_to, resolve_version

    project = Path(project).resolve()
    apply_runtime_defaults(project)
    file = project / "params.yaml"
    settings = load_params(file) if file.is_file() else parse_params({}, "built-in defaults")
    tracking.configure(settings.tracking, project)
    uri = _uri(model, settings.registry.champion_alias)
    copy = tempfile.TemporaryDirectory(prefix="tlpipe-model-")
    try:
        version = resolve_version(uri)
        local = copy_verified_to(version, Path(copy.name) / "model")
        pyfunc = mlflow.pyfunc.load_model(str(local), model_config={
            "device": device or settings.device,
            "features": settings.features.model_dump(mode="json")})
    except ModelNotFound as error:
        copy.cleanup()
        raise TlpipeError(f"cannot load {error}; `tlpipe models` lists names, versions and "
                          "aliases") from None
    except BaseException:
        copy.cleanup()
        raise
    return Model(uri, version, pyfunc, copy)


def _uri(model: str, champion_alias: str) -> str:
    from tlpipe.registry.loader import model_uri

    if model.startswith("models:/"):
        return model
    match = re.fullmatch(r"([^/@]+)(?:@([^/@]+)|/(\d+))?", model)
    if not match:
        raise TlpipeError(f"{model!r}: expected NAME, NAME@ALIAS, NAME/VERSION or a models:/ "
                          "URI")
    name, alias, version = match.groups()
    return model_uri(name, version, alias or champion_alias)
