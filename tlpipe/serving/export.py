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
from tlpipe.metrics import decide
from tlpipe.serving.batch import image_files
from tlpipe.serving.onnx_preprocessing import IMAGE_INPUT, with_preprocessing
from tlpipe.serving.pyfunc import array_to_rgb
from tlpipe.training.model import ModelSpec
from tlpipe.training.tta import probabilities_with
from tlpipe.vectors.images import load_rgb
from tlpipe.vectors.preprocess import eval_transform

# Largest allowed difference between ONNX Runtime's class probabilities and the pyfunc's.
# Both run float32 and resize with the same filters, but Pillow's fixed-point arithmetic
# rounds some pixels one 8-bit level apart (up to a fifth of them on noise). Measured: 1.2e-4
# on the demo model, 1.8e-3 on a model of 32x32 grey pixels (every pixel a feature).
PROBABILITY_TOLERANCE = 5e-3
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


class _Answers(nn.Module):
    """The classifier with its softmax, its test-time flips and its per-class thresholds, so
    the ONNX graph returns what the pyfunc returns: probabilities and the label's index."""

    def __init__(self, classifier: nn.Module, spec: ModelSpec) -> None:
        super().__init__()
        self.classifier, self.tta = classifier, spec.tta
        self.register_buffer("thresholds", torch.tensor(
            spec.thresholds or [1.0] * len(spec.classes), dtype=torch.float32))

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probabilities = probabilities_with(self.tta, self._probabilities, pixels)
        return probabilities, (probabilities / self.thresholds).argmax(dim=1)

    def _probabilities(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.classifier(pixels), dim=1)


def export_onnx(model: nn.Module, spec: ModelSpec, target: Path, check_images: list[Image.Image],
                source: str) -> ExportReport:
    """Write ``target`` (one self-contained .onnx file that takes decoded uint8 images and does
    the model's preprocessing itself) and ``target``.json with the classes; fail, writing
    nothing, if ONNX Runtime's probabilities differ from the pyfunc's (Pillow's preprocessing,
    then PyTorch) by more than ``PROBABILITY_TOLERANCE`` on ``check_images`` and on random
    RGB and grey images of other sizes."""
    import onnx
    import onnxruntime

    wrapper = _Answers(model.eval(), spec).eval()
    preprocessing = spec.preprocessing_config
    size = preprocessing.input_size
    target = Path(target)
    with atomic_path(target) as temporary:
        torch.onnx.export(wrapper, (torch.randn(2, 3, size, size),), str(temporary),
                          input_names=["pixels"], output_names=["probabilities", "label"],
                          opset_version=OPSET, dynamo=True,
                          dynamic_shapes=({0: torch.export.Dim("batch")},),
                          external_data=False, verbose=False)
        onnx.save(with_preprocessing(onnx.load(str(temporary)), preprocessing), str(temporary))
        session = onnxruntime.InferenceSession(str(temporary),
                                               providers=["CPUExecutionProvider"])
        transform = eval_transform(preprocessing)
        inputs = [np.asarray(image) for image in check_images] + _random_images(size)
        difference, labels_differ = 0.0, 0
        for pixels in inputs:  # one at a time: the sizes differ
            exported, label = session.run(None, {IMAGE_INPUT: _as_batch(pixels)})
            with torch.inference_mode():
                expected = wrapper(transform(array_to_rgb(pixels))[None])[0].numpy()
            difference = max(difference, float(np.abs(exported - expected).max()))
            labels_differ += int(label[0] != decide(exported, spec.thresholds)[0])
        if labels_differ:
            raise ExportError(f"{target}: the graph's label differs from its probabilities' "
                              f"on {labels_differ} images; nothing was written")
        if difference > PROBABILITY_TOLERANCE:
            raise ExportError(f"{target}: ONNX Runtime differs from the model by "
                              f"{difference:.3g} (tolerance {PROBABILITY_TOLERANCE}); nothing "
                              "was written")
    metadata = target.with_suffix(target.suffix + ".json")
    write_json(metadata, {
        "source": source, "classes": spec.classes, "input": IMAGE_INPUT,
        "input_layout": "uint8 NHWC (batch, height, width, channels), RGB (3 channels) or grey "
                        "(1), any size, one size per batch: the decoded image. The graph "
                        "resizes, crops and normalises it as the model's preprocessing below",
        "output": "probabilities: one column per class in the order of 'classes'; label: "
                  "the index in 'classes' of the model's answer (its thresholds applied)",
        "test_time_augmentation": spec.tta, "thresholds": spec.thresholds,
        "preprocessing": spec.preprocessing, "opset": OPSET,
        "max_abs_difference_vs_pytorch": difference, "tolerance": PROBABILITY_TOLERANCE,
    })
    return ExportReport(str(target), str(metadata), len(inputs), difference,
                        PROBABILITY_TOLERANCE)


def _random_images(size: int) -> list[np.ndarray]:
    """Noise images taller, wider and smaller than the input, in RGB and in grey."""
    generator = np.random.default_rng(0)
    return [generator.integers(0, 256, shape, dtype=np.uint8)
            for shape in ((size + 37, size + 5, 3), (size // 2 + 3, 2 * size, 3),
                          (size + 11, size + 60))]


def _as_batch(pixels: np.ndarray) -> np.ndarray:
    """One HxW or HxWxC image as the graph's NHWC batch of one."""
    return (pixels[:, :, None] if pixels.ndim == 2 else pixels)[None]


def sample_images(root: Path, count: int = 8) -> list[Image.Image]:
    """Up to ``count`` real images of the data folder to check an export on (none where the
    folder is gone: the random inputs still are)."""
    if not root.is_dir():
        return []
    return [load_rgb(path) for path in image_files([root])[:count]]
