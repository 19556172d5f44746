"""The registered model: an MLflow pyfunc that takes encoded images and returns labels.

It is logged as "models from code" (``tlpipe/pyfunc_entry.py``), so loading it imports this
module and reads safetensors weights: nothing is unpickled.
"""

from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch

IMAGE_COLUMN = "image"


class ImageClassifierModel(mlflow.pyfunc.PythonModel):
    """Input: a DataFrame with an ``image`` column of encoded image bytes (JPEG, PNG, ...).

    Output: ``label``, ``probability`` (of that label) and ``prob_<class>`` for every class.
    """

    def load_context(self, context) -> None:
        from tlpipe.augment import eval_transform
        from tlpipe.model_io import load_classifier

        self.model, self.spec = load_classifier(Path(context.artifacts["model_dir"]))
        self.transform = eval_transform(self.spec.preprocessing_config)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None
                ) -> pd.DataFrame:
        from tlpipe.images import decode_rgb

        images = [_as_bytes(value) for value in model_input[IMAGE_COLUMN]]
        batch = torch.stack([self.transform(decode_rgb(data)) for data in images])
        with torch.inference_mode():
            probabilities = torch.softmax(self.model(batch), dim=1).numpy()
        return prediction_frame(probabilities, self.spec.classes)


def _as_bytes(value: object) -> bytes:
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, str):  # the JSON scoring protocol sends binary columns base64-encoded
        import base64

        return base64.b64decode(value)
    raise TypeError(f"column {IMAGE_COLUMN!r}: expected encoded image bytes, got {type(value)}")


def prediction_frame(probabilities: np.ndarray, classes: list[str]) -> pd.DataFrame:
    best = probabilities.argmax(axis=1)
    frame = pd.DataFrame({
        "label": [classes[i] for i in best],
        "probability": probabilities[np.arange(len(best)), best].astype(float),
    })
    for index, name in enumerate(classes):
        frame[f"prob_{name}"] = probabilities[:, index].astype(float)
    return frame
