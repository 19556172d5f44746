"""Test-time augmentation: each image scored with its mirror image, kept only where that beats
the plain model on validation (fastai's ``tta``, without its random crops).

Evaluation, the served model and the ONNX export all score through ``probabilities_with``
with the model's own ``tta`` (``ModelSpec.tta``), so what validation chose is what is served.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from tlpipe.training.early_stopping import ValidationScores

Probabilities = Callable[[torch.Tensor], torch.Tensor]


def probabilities_with(tta: str, probabilities: Probabilities, images: torch.Tensor
                       ) -> torch.Tensor:
    """Class probabilities of an image batch (NCHW); with ``tta`` "flip", the mean of the
    images' and their left-right mirror images'."""
    if tta == "none":
        return probabilities(images)
    if tta == "flip":
        return (probabilities(images) + probabilities(images.flip(-1))) / 2
    raise ValueError(f"test-time augmentation {tta!r}: expected 'none' or 'flip'")


@dataclass(frozen=True)
class TtaChoice:
    tta: str  # what the model does: "none" or "flip"
    reason: str
    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # on validation, by tta

    def to_dict(self) -> dict:
        return {"tta": self.tta, "reason": self.reason, "scores": self.scores}


@dataclass(frozen=True)
class ValidationProbabilities:
    """A model's class probabilities on the validation images, plain and mirrored."""

    plain: torch.Tensor
    flipped: torch.Tensor
    truth: torch.Tensor

    def under(self, tta: str) -> torch.Tensor:
        return self.plain if tta == "none" else (self.plain + self.flipped) / 2


def validation_probabilities(model: nn.Module, val_batches: Iterable[tuple[torch.Tensor,
                                                                             torch.Tensor]],
                             device: torch.device) -> ValidationProbabilities:
    plain, flipped, truth = [], [], []
    model.eval().to(device)
    try:
        with torch.inference_mode():
            for images, labels in val_batches:
                images = images.to(device)
                plain.append(torch.softmax(model(images).float(), dim=1).cpu())
                flipped.append(torch.softmax(model(images.flip(-1)).float(), dim=1).cpu())
                truth.append(labels.cpu())
    finally:
        model.cpu()
    if not truth:
        return ValidationProbabilities(torch.empty(0, 0), torch.empty(0, 0),
                                       torch.empty(0, dtype=torch.long))
    return ValidationProbabilities(torch.cat(plain), torch.cat(flipped), torch.cat(truth))


def choose_tta(setting: str, validation: ValidationProbabilities | None, num_classes: int,
               selection_metric: str = "macro_f1", unavailable: str | None = None
               ) -> TtaChoice:
    """``setting`` "flip" or "none" as given; "auto": "flip" only if it scores a lower
    class-balanced validation loss and no lower ``selection_metric`` than the plain model on
    ``validation`` (the rule early stopping applies to an epoch), else "none", also where
    there is no validation to judge on (``unavailable`` says why)."""
    if setting != "auto":
        return TtaChoice(setting, f"evaluation.tta is {setting}")
    if validation is None or not len(validation.truth):
        return TtaChoice("none", f"{unavailable or 'no validation images'}: test-time flips "
                                 "are not judged")
    truth = validation.truth
    figures = {}
    for name in ("none", "flip"):
        probabilities, scores = validation.under(name), ValidationScores(num_classes)
        picked = probabilities[torch.arange(len(truth)), truth]
        scores.add(-picked.clamp(min=1e-12).log(), probabilities.argmax(1), truth)
        figures[name] = scores.figures()
    key = f"val_{selection_metric}"
    better = (figures["flip"]["val_loss"] < figures["none"]["val_loss"]
              and figures["flip"][key] >= figures["none"][key])
    shown = "; ".join(f"{name}: val loss {score['val_loss']:.4f}, accuracy "
                      f"{score['val_accuracy']:.4f}, macro-F1 {score['val_macro_f1']:.4f}"
                      for name, score in figures.items())
    return TtaChoice("flip" if better else "none",
                     ("flips help on validation" if better
                      else "flips do not help on validation") + f" ({shown})", figures)
