"""ONNX export of a trained classifier, checked against PyTorch with onnxruntime.

An image model's graph takes decoded pixels and does its preprocessing itself. A text model's
takes token ids and an attention mask: tokenizing stays outside the graph, since ONNX has no
WordPiece operator without onnxruntime-extensions (not a dependency). Its export writes the
model's own tokenizer beside the graph, as a ``tokenizers`` file set to cut at the encoder's
length and pad a batch, so ``Tokenizer.from_file(...).encode_batch(texts)`` gives the inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from tlpipe.data.text_facts import TEXT_SUFFIXES
from tlpipe.errors import TlpipeError
from tlpipe.fsio import atomic_path, write_json
from tlpipe.metrics import decide
from tlpipe.serving.batch import image_files, text_inputs
from tlpipe.serving.inference import TextScorer
from tlpipe.serving.onnx_preprocessing import IMAGE_INPUT, with_preprocessing
from tlpipe.serving.pyfunc import array_to_rgb
from tlpipe.training.decisions import probabilities_with
from tlpipe.training.model import Classifier, ModelSpec
from tlpipe.vectors.images import load_rgb
from tlpipe.vectors.preprocess import eval_transform

# Largest allowed difference between ONNX Runtime's class probabilities and the pyfunc's.
# Both run float32 and resize with the same filters, but Pillow's fixed-point arithmetic
# rounds some pixels one 8-bit level apart (up to a fifth of them on noise). Measured: 1.2e-4
# on the demo model, 1.8e-3 on a model of 32x32 grey pixels (every pixel a feature).
PROBABILITY_TOLERANCE = 5e-3
OPSET = 18
# The same for a text model: the graph reads padded batches, the pyfunc batches of one length
# (no padding); padding moves the attention's sums by about 1e-7.
TEXT_PROBABILITY_TOLERANCE = 1e-4
TOKEN_INPUTS = ("input_ids", "attention_mask")
# Texts every export is also checked on: short, long past the encoder's cut, and not English.
CHECK_TEXTS = ("ok", "The quick brown fox jumps over the lazy dog. " * 60,
               "Ünïcödé, 漢字 and emoji 🙂 in one line.", "  spaces around  ")


class ExportError(TlpipeError):
    pass


@dataclass(frozen=True)
class ExportReport:
    onnx_file: str
    metadata_file: str
    inputs_checked: int
    max_abs_difference: float
    tolerance: float
    tokenizer_file: str | None = None  # a text model's: tokenizing stays outside the graph


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


def export_onnx(model: nn.Module, spec: ModelSpec, target: Path, check_inputs: list,
                source: str) -> ExportReport:
    """Write ``target`` (one self-contained .onnx file that takes decoded uint8 images and does
    the model's preprocessing itself) and ``target``.json with the classes; fail, writing
    nothing, if ONNX Runtime's probabilities differ from the pyfunc's (Pillow's preprocessing,
    then PyTorch) by more than ``PROBABILITY_TOLERANCE`` on ``check_inputs`` (images) and on
    random RGB and grey images of other sizes. A text model: ``_export_text_onnx``, checked
    on ``check_inputs`` (texts)."""
    target = Path(target)
    if spec.modality == "text":
        return _export_text_onnx(model, spec, target, check_inputs, source)
    import onnx
    import onnxruntime

    wrapper = _Answers(model.eval(), spec).eval()
    preprocessing = spec.preprocessing_config
    size = preprocessing.input_size
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
        inputs = [np.asarray(image) for image in check_inputs] + _random_images(size)
        difference, labels_differ = 0.0, 0
        for pixels in inputs:  # one at a time: the sizes differ
            exported, label = session.run(None, {IMAGE_INPUT: _as_batch(pixels)})
            with torch.inference_mode():
                expected = wrapper(transform(array_to_rgb(pixels))[None])[0].numpy()
            difference = max(difference, float(np.abs(exported - expected).max()))
            labels_differ += int(label[0] != decide(exported, spec.thresholds)[0])
        _check(target, difference, labels_differ, PROBABILITY_TOLERANCE)
    metadata = _metadata_path(target)
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


class _TextAnswers(nn.Module):
    """The encoder, the head, the softmax and the per-class thresholds in one graph."""

    def __init__(self, classifier: Classifier, spec: ModelSpec) -> None:
        super().__init__()
        self.classifier = classifier
        self.register_buffer("thresholds", torch.tensor(
            spec.thresholds or [1.0] * len(spec.classes), dtype=torch.float32))

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        vectors = self.classifier.backbone(ids, attention_mask)
        probabilities = torch.softmax(self.classifier.head(vectors), dim=1)
        return probabilities, (probabilities / self.thresholds).argmax(dim=1)


def _tokenizer_path(target: Path) -> Path:
    return target.with_name(target.stem + ".tokenizer.json")


def _export_text_onnx(model: Classifier, spec: ModelSpec, target: Path, check_texts: list[str],
                      source: str) -> ExportReport:
    """Write ``target`` (the graph) and its tokenizer; fail, writing neither, where ONNX
    Runtime's probabilities differ from the pyfunc's by more than
    ``TEXT_PROBABILITY_TOLERANCE`` on ``check_texts`` and ``CHECK_TEXTS``, or its label from
    the thresholds' answer."""
    import onnxruntime

    encoder = model.backbone.eval()
    wrapper = _TextAnswers(model.eval(), spec).eval()
    texts = list(check_texts) + list(CHECK_TEXTS)
    example = encoder.tokenize(texts[:2])
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length", max=encoder.max_tokens)
    with atomic_path(target) as temporary:
        torch.onnx.export(wrapper, (example.ids, example.attention_mask), str(temporary),
                          input_names=list(TOKEN_INPUTS), output_names=["probabilities", "label"],
                          opset_version=OPSET, dynamo=True, external_data=False, verbose=False,
                          dynamic_shapes=({0: batch, 1: length}, {0: batch, 1: length}))
        session = onnxruntime.InferenceSession(str(temporary), providers=["CPUExecutionProvider"])
        tokens = encoder.tokenize(texts)  # one padded batch, as a user of the file would send
        exported, labels = session.run(None, {
            TOKEN_INPUTS[0]: tokens.ids.numpy(), TOKEN_INPUTS[1]: tokens.attention_mask.numpy()})
        expected = TextScorer(model, torch.device("cpu"))(texts)
        difference = float(np.abs(exported - expected).max())
        _check(target, difference, int((labels != decide(exported, spec.thresholds)).sum()),
               TEXT_PROBABILITY_TOLERANCE)
        tokenizer = _tokenizer_path(target)
        encoder.tokenizer.save(str(tokenizer))
    metadata = _metadata_path(target)
    write_json(metadata, {
        "source": source, "classes": spec.classes, "inputs": list(TOKEN_INPUTS),
        "input_layout": f"int64 (batch, tokens): what {tokenizer.name} makes of "
                        f"the texts (tokenizers' Tokenizer.from_file(...).encode_batch(texts): "
                        f".ids and .attention_mask); it cuts a text at {encoder.max_tokens} "
                        "tokens and pads a batch to its longest text",
        "tokenizer": tokenizer.name,
        "output": "probabilities: one column per class in the order of 'classes'; label: "
                  "the index in 'classes' of the model's answer (its thresholds applied)",
        "thresholds": spec.thresholds, "opset": OPSET, "max_abs_difference_vs_pytorch":
            difference, "tolerance": TEXT_PROBABILITY_TOLERANCE,
    })
    return ExportReport(str(target), str(metadata), len(texts), difference,
                        TEXT_PROBABILITY_TOLERANCE, str(tokenizer))


def _check(target: Path, difference: float, labels_differ: int, tolerance: float) -> None:
    """Refuse an export (nothing is moved into place) that does not answer as the model."""
    if labels_differ:
        raise ExportError(f"{target}: the graph's label differs from its probabilities' on "
                          f"{labels_differ} inputs; nothing was written")
    if difference > tolerance:
        raise ExportError(f"{target}: ONNX Runtime differs from the model by {difference:.3g} "
                          f"(tolerance {tolerance}); nothing was written")


def _metadata_path(target: Path) -> Path:
    return target.with_suffix(target.suffix + ".json")


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


def sample_texts(root: Path, text_column: str, max_bytes: int, count: int = 8) -> list[str]:
    """Up to ``count`` readable texts of the data (a folder of .txt files or a table) to check
    a text model's export on; none where the data is gone."""
    if root.is_dir():
        inputs = sorted(p for p in root.rglob("*") if p.suffix.lower() in TEXT_SUFFIXES)[:count]
    else:
        inputs = [root] if root.is_file() else []
    texts = text_inputs(inputs, text_column, max_bytes, [])
    return texts.loc[texts["error"] == "", "text"].tolist()[:count]
