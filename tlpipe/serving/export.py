"""ONNX export of a trained classifier, checked against PyTorch with onnxruntime."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from tlpipe.errors import TlpipeError
from tlpipe.fsio import atomic_path, write_json
from tlpipe.serving.batch import image_files
from tlpipe.training.model import ModelSpec
from tlpipe.training.tta import probabilities_with
from tlpipe.vectors.images import load_rgb
from tlpipe.vectors.preprocess import eval_transform

# Largest allowed difference between ONNX Runtime's and PyTorch's class probabilities.
# Both run float32; measured differences on the demo model are below 1e-6.
PROBABILITY_TOLERANCE = 1e-4
OPSET = 18


class ExportError(TlpipeError):
    pass


@dataclass(frozen=True)
class ExportReport:
    onnx_file: str
    metadata_file: str
    inputs_checked: int
    max_abs_difference: float
    tolerance: float


class _Probabilities(nn.Module):
    """The classifier with its softmax and its test-time flips, so the ONNX graph returns what
    the pyfunc returns."""

    def __init__(self, classifier: nn.Module, tta: str) -> None:
        super().__init__()
        self.classifier, self.tta = classifier, tta

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return probabilities_with(self.tta, self._probabilities, pixels)

    def _probabilities(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.classifier(pixels), dim=1)


def export_onnx(model: nn.Module, spec: ModelSpec, target: Path, check_images: list[Image.Image],
                source: str) -> ExportReport:
    """Write ``target`` (one self-contained .onnx file) and ``target``.json with the classes
    and the preprocessing it expects; fail, writing nothing, if ONNX Runtime's outputs differ
    from PyTorch's by more than ``PROBABILITY_TOLERANCE`` on ``check_images`` and two random
    inputs."""
    import onnxruntime

    wrapper = _Probabilities(model.eval(), spec.tta).eval()
    transform = eval_transform(spec.preprocessing_config)
    size = spec.preprocessing_config.input_size
    pixels = torch.cat([torch.stack([transform(image) for image in check_images])
                        if check_images else torch.empty(0, 3, size, size),
                        torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))])
    target = Path(target)
    with atomic_path(target) as temporary:
        torch.onnx.export(wrapper, (pixels[:2],), str(temporary), input_names=["pixels"],
                          output_names=["probabilities"], opset_version=OPSET, dynamo=True,
                          dynamic_shapes=({0: torch.export.Dim("batch")},),
                          external_data=False, verbose=False)
        session = onnxruntime.InferenceSession(str(temporary),
                                               providers=["CPUExecutionProvider"])
        exported = session.run(None, {"pixels": pixels.numpy()})[0]
        with torch.inference_mode():
            expected = wrapper(pixels).numpy()
        difference = float(np.abs(exported - expected).max())
        if difference > PROBABILITY_TOLERANCE:
            raise ExportError(f"{target}: ONNX Runtime differs from PyTorch by {difference:.3g}"
                              f" (tolerance {PROBABILITY_TOLERANCE}); nothing was written")
    metadata = target.with_suffix(target.suffix + ".json")
    write_json(metadata, {
        "source": source, "classes": spec.classes, "input": "pixels",
        "input_layout": "float32 NCHW, RGB, "
                        + ("the whole image resized to a square"
                           if spec.preprocessing_config.resize == "resize"
                           else "shorter side resized, centre-cropped")
                        + ", normalised as below",
        "output": "probabilities, one column per class in the order of 'classes'",
        "test_time_augmentation": spec.tta,
        "preprocessing": spec.preprocessing, "opset": OPSET,
        "max_abs_difference_vs_pytorch": difference, "tolerance": PROBABILITY_TOLERANCE,
    })
    return ExportReport(str(target), str(metadata), len(pixels), difference,
                        PROBABILITY_TOLERANCE)


def sample_images(root: Path, count: int = 8) -> list[Image.Image]:
    """Up to ``count`` real images of the data folder to check an export on (none where the
    folder is gone: the random inputs still are)."""
    if not root.is_dir():
        return []
    return [load_rgb(path) for path in image_files([root])[:count]]
