"""The registered model: an MLflow pyfunc that takes encoded images and returns labels.

It is logged as "models from code" (``tlpipe/pyfunc_entry.py``), so loading it imports this
module and reads safetensors weights: nothing is unpickled.
"""

from __future__ import annotations

import base64
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch
from PIL import Image

IMAGE_COLUMN = "image"


class ImageClassifierModel(mlflow.pyfunc.PythonModel):
    """Input: a DataFrame with an ``image`` column. Each value is encoded image bytes (JPEG,
    PNG, ...; base64 text in JSON requests) or a uint8 array HxW[xC] (nested lists in JSON).

    Output: ``label``, ``probability`` (of that label) and ``prob_<class>`` for every class.
    """

    def load_context(self, context) -> None:
        from tlpipe.model_io import load_classifier
        from tlpipe.preprocess import eval_transform

        self.model, self.spec = load_classifier(Path(context.artifacts["model_dir"]))
        self.transform = eval_transform(self.spec.preprocessing_config)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None
                ) -> pd.DataFrame:
        batch = torch.stack([self.transform(as_image(value, row))
                             for row, value in enumerate(model_input[IMAGE_COLUMN])])
        with torch.inference_mode():
            probabilities = torch.softmax(self.model(batch), dim=1).numpy()
        return prediction_frame(probabilities, self.spec.classes)


def as_image(value: object, row: int = 0) -> Image.Image:
    from tlpipe.images import array_to_rgb, decode_rgb

    try:
        if isinstance(value, bytes | bytearray):
            return decode_rgb(bytes(value))
        if isinstance(value, str):  # JSON requests carry binary values base64-encoded
            return decode_rgb(base64.b64decode(value))
        if isinstance(value, np.ndarray | list):
            return array_to_rgb(value)
    except Exception as error:
        raise ValueError(f"column {IMAGE_COLUMN!r}, row {row}: not a readable image "
                         f"({type(error).__name__}: {error})") from None
    raise ValueError(f"column {IMAGE_COLUMN!r}, row {row}: expected image bytes or a uint8 "
                     f"array, got {type(value).__name__}")


def prediction_frame(probabilities: np.ndarray, classes: list[str]) -> pd.DataFrame:
    best = probabilities.argmax(axis=1)
    frame = pd.DataFrame({
        "label": [classes[i] for i in best],
        "probability": probabilities[np.arange(len(best)), best].astype(float),
    })
    for index, name in enumerate(classes):
        frame[f"prob_{name}"] = probabilities[:, index].astype(float)
    return frame
