"""Entry point MLflow runs when loading a registered tlpipe model (models from code)."""

import mlflow

from tlpipe.serving.pyfunc import ImageClassifierModel

mlflow.models.set_model(ImageClassifierModel())
