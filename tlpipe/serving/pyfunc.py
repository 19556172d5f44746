"""The registered model: an MLflow pyfunc that takes encoded images and returns labels.

It is logged as "models from code" (``tlpipe/serving/pyfunc_entry.py``), so loading it imports this
module and reads safetensors weights: nothing is unpickled.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from PIL import Image, UnidentifiedImageError

from tlpipe.serving.inference import prediction_frame

IMAGE_COLUMN = "image"
TEXT_COLUMN = "text"  # a text model's input: a column of strings (or a list of strings)
DEVICE_VARIABLE = "TLPIPE_DEVICE"


class BadInput(MlflowException, ValueError):
    """Input the model cannot score. A server answers it with 400 and this message alone: an
    MlflowException carries no server traceback, where any other error would."""

    def __init__(self, message: str):
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


class ImageClassifierModel(mlflow.pyfunc.PythonModel):
    """Input: a DataFrame with an ``image`` column (a text model: a ``text`` column of strings,
    or a list of strings). Each value is encoded image bytes (JPEG,
    PNG, ...; base64 text in JSON requests) or a uint8 array HxW[xC] (nested lists in JSON).

    Output: ``label``, ``probability`` (of that label) and ``prob_<class>`` for every class.

    It scores on the device and engine of ``tlpipe.serving.inference``: set ``TLPIPE_DEVICE`` (auto,
    cpu, cuda, cuda:N) for a server, or pass ``model_config={"device": ..., "features":
    {...}}`` to ``mlflow.pyfunc.load_model``.
    """

    def load_context(self, context) -> None:
        from tlpipe.config import FeaturesConfig
        from tlpipe.devices import resolve_device
        from tlpipe.serving.inference import Scorer, TextScorer
        from tlpipe.training.model import load_classifier
        from tlpipe.vectors.preprocess import eval_decode_side, eval_transform

        model, self.spec = load_classifier(Path(context.artifacts["model_dir"]))
        # `tlpipe predict` passes the project's settings as the model_config; a server
        # takes its device from TLPIPE_DEVICE (default: a GPU when there is one).
        settings = context.model_config or {}
        device = resolve_device(settings.get("device") or os.environ.get(DEVICE_VARIABLE, "auto"),
                                "device" if settings.get("device") else DEVICE_VARIABLE)
        if self.spec.modality == "text":
            self.scorer = TextScorer(model, device)
            return
        self.transform = eval_transform(self.spec.preprocessing_config)
        self.decode_side = eval_decode_side(self.spec.preprocessing_config)
        self.scorer = Scorer(model, self.spec, FeaturesConfig(**settings.get("features") or {}),
                             device)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None
                ) -> pd.DataFrame:
        if self.spec.modality == "text":
            return prediction_frame(self.scorer(as_texts(model_input)), self.spec.classes,
                                    self.spec.thresholds)
        try:
            images = [as_image(value, row, self.decode_side, self.spec.max_pixels)
                      for row, value in enumerate(model_input[IMAGE_COLUMN])]
        except ValueError as error:
            raise BadInput(str(error)) from None
        batch = torch.stack([self.transform(image) for image in images])
        return prediction_frame(self.scorer(batch), self.spec.classes, self.spec.thresholds)


def takes_text(loaded: mlflow.pyfunc.PyFuncModel) -> bool:
    """Whether a loaded tlpipe model classifies texts (its input is not the image column)."""
    return loaded.metadata.get_input_schema().input_names() != [IMAGE_COLUMN]


def as_texts(model_input: object) -> list[str]:
    """A text model's input as a list of strings: a DataFrame's ``text`` column (or its only
    column), a Series, a list, or one string; anything else is refused, naming the row."""
    if isinstance(model_input, pd.DataFrame):
        if TEXT_COLUMN not in model_input.columns and len(model_input.columns) != 1:
            raise BadInput(f"expected a column {TEXT_COLUMN!r} of strings, got columns "
                           f"{list(model_input.columns)[:10]}")
        values = (model_input[TEXT_COLUMN] if TEXT_COLUMN in model_input.columns
                  else model_input.iloc[:, 0]).tolist()
    elif isinstance(model_input, str):
        values = [model_input]
    else:
        values = list(np.ravel(model_input)) if isinstance(model_input, np.ndarray) else \
            list(model_input)
    for row, value in enumerate(values):
        if not isinstance(value, str):
            raise BadInput(f"column {TEXT_COLUMN!r}, row {row}: expected a string, got "
                           f"{type(value).__name__}")
    return values


def as_image(value: object, row: int = 0, min_side: int | None = None,
             max_pixels: int | None = None) -> Image.Image:
    """One input value as RGB; encoded JPEGs decode as ``images.load_rgb`` does. An image
    of more than ``max_pixels`` is refused before it is decoded."""
    from tlpipe.vectors.images import ImageTooLarge, decode_rgb

    try:
        if isinstance(value, bytes | bytearray):
            return decode_rgb(bytes(value), min_side, max_pixels)
        if isinstance(value, str):  # JSON requests carry binary values base64-encoded
            return decode_rgb(base64.b64decode(value), min_side, max_pixels)
        if isinstance(value, np.ndarray | list):
            return array_to_rgb(value, max_pixels)
    except ImageTooLarge as error:
        raise ValueError(f"column {IMAGE_COLUMN!r}, row {row}: {error} (the model's "
                         "max_pixels, validation.max_pixels when it was trained): downscale "
                         "the image") from None
    except Exception as error:
        why = ("not an image format PIL knows" if isinstance(error, UnidentifiedImageError)
               else f"{type(error).__name__}: {error}")  # its message holds a memory address
        raise ValueError(f"column {IMAGE_COLUMN!r}, row {row}: not a readable image "
                         f"({why})") from None
    raise ValueError(f"column {IMAGE_COLUMN!r}, row {row}: expected image bytes or a uint8 "
                     f"array, got {type(value).__name__}")


def array_to_rgb(values: object, max_pixels: int | None = None) -> Image.Image:
    """A uint8 array (or nested lists from JSON) of shape HxW, HxWx1, HxWx3 or HxWx4; one of
    more than ``max_pixels`` is refused before it is converted or resized."""
    from tlpipe.vectors.images import ImageTooLarge, to_rgb

    height, width = _height_width(values)
    if max_pixels is not None and height * width > max_pixels:
        raise ImageTooLarge(f"{height}x{width} = {height * width} pixels, more than the limit "
                            f"of {max_pixels}; not converted")
    array = np.asarray(values)
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.integer) or array.min() < 0 or array.max() > 255:
            raise ValueError(f"image arrays must hold uint8 values 0..255, got {array.dtype}")
        array = array.astype(np.uint8)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4)):
        return to_rgb(Image.fromarray(array))
    raise ValueError(f"image arrays must be HxW, HxWx1, HxWx3 or HxWx4, got shape {array.shape}")


def _height_width(values: np.ndarray | list) -> tuple[int, int]:
    """Nested lists are measured before NumPy copies them: the first row's width."""
    if isinstance(values, np.ndarray):
        return (*values.shape, 1, 1)[:2]
    return len(values), (len(values[0]) if values and isinstance(values[0], list) else 1)
