"""Using a trained model: scoring images, the MLflow pyfunc, batch prediction, ONNX export."""
