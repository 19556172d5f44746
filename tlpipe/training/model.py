"""The classifier (backbone then head), saved and loaded without pickles: safetensors plus JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tlpipe.config import ValidationConfig
from tlpipe.fsio import write_atomic, write_json
from tlpipe.training.heads import HeadSpec, build_head
from tlpipe.vectors.backbones import Preprocessing, build_architecture
from tlpipe.vectors.text_encoder import TextEncoder

WEIGHTS_FILE, SPEC_FILE, ENCODER_DIR = "model.safetensors", "model.json", "encoder"

BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


class Classifier(nn.Module):
    """Backbone features into the head. BatchNorm layers stay in eval mode even in ``train()``."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))

    def train(self, mode: bool = True) -> Classifier:
        super().train(mode)
        for module in self.backbone.modules():
            if isinstance(module, BATCHNORM):
                module.eval()
        return self


@dataclass
class ModelSpec:
    backbone: str
    num_features: int
    classes: list[str]
    head: dict  # HeadSpec fields: what shapes the head
    preprocessing: dict
    tta: str = "none"  # "flip": probabilities averaged with the mirror image's (training.decisions)
    thresholds: list[float] | None = None  # per class, in classes' order (training.decisions)
    # Serving refuses to decode larger images (validation.max_pixels when it was trained).
    max_pixels: int = ValidationConfig.model_fields["max_pixels"].default
    # "text": the backbone is a text encoder, whose tokenizer and settings are saved beside
    # the weights (ENCODER_DIR), and ``preprocessing`` is empty.
    modality: str = "image"

    @property
    def preprocessing_config(self) -> Preprocessing:
        return Preprocessing.from_dict(self.preprocessing)


def save_classifier(model: Classifier, spec: ModelSpec, directory: Path) -> Path:
    directory = Path(directory)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    write_atomic(directory / WEIGHTS_FILE, lambda path: save_file(state, str(path)))
    if spec.modality == "text":
        model.backbone.save_layout(directory / ENCODER_DIR)
    write_json(directory / SPEC_FILE, spec.__dict__)
    return directory


def load_classifier(directory: Path) -> tuple[Classifier, ModelSpec]:
    directory = Path(directory)
    spec = ModelSpec(**json.loads((directory / SPEC_FILE).read_text()))
    head = build_head(HeadSpec.from_dict(spec.head, spec.num_features, len(spec.classes)))
    backbone = (TextEncoder(directory / ENCODER_DIR, load_weights=False)
                if spec.modality == "text" else build_architecture(spec.backbone))
    model = Classifier(backbone, head)
    model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)), strict=True)
    return model.eval(), spec
