from __future__ import annotations

import pytest
import timm
import torch

from tlpipe.vectors.backbones import BackboneError, load_backbone


def test_default_backbone_has_real_imagenet_weights():
    backbone = load_backbone()
    assert backbone.num_features == 1280
    assert backbone.preprocessing.interpolation == "bicubic"
    assert backbone.preprocessing.mean == (0.5, 0.5, 0.5)
    # Randomly initialised BatchNorm has running stats of exactly 0 and 1.
    stats = backbone.model.bn2
    assert not torch.all(stats.running_mean == 0) and not torch.all(stats.running_var == 1)
    assert not any(p.requires_grad for p in backbone.model.parameters())


def test_a_timm_model_loads_from_a_local_weights_file(tmp_path):
    # Stand-in weights written by the test, only to exercise the file path.
    source = timm.create_model("resnet18", pretrained=False)
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    backbone = load_backbone("timm/resnet18", tmp_path / "resnet18.pth")
    assert backbone.num_features == 512
    assert torch.equal(backbone.model.conv1.weight, source.conv1.weight)


def test_a_mismatched_weights_file_is_refused(tmp_path):
    torch.save(timm.create_model("resnet34", pretrained=False).state_dict(), tmp_path / "w.pth")
    with pytest.raises(BackboneError, match="does not fit"):
        load_backbone("timm/resnet18", tmp_path / "w.pth")


@pytest.mark.parametrize("name", ["timm/resnet18", "torchvision/resnet18"])
def test_without_network_or_file_the_error_says_what_to_do(name, monkeypatch):
    import huggingface_hub.constants

    # huggingface_hub reads HF_HUB_OFFLINE at import; set what it reads, or it retries for ~45 s.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("TORCH_HOME", "/nonexistent-torch-home")
    with pytest.raises(BackboneError, match="weights_file"):
        load_backbone(name)


def test_unknown_backbone_lists_the_choices():
    with pytest.raises(BackboneError, match="efficientnet_lite0"):
        load_backbone("resnet9000")


@pytest.mark.parametrize("name, input_size", [("efficientnet_lite0", 224),
                                              ("efficientnet_lite1", 240),
                                              ("efficientnet_lite2", 260)])
def test_each_efficientnet_lite_size_loads_offline_with_real_weights_and_its_own_input(
        name, input_size, demo_root):
    """The packaged weights with their ImageNet classifier still attached see bees as bees
    (class 309), at the size's own resolution: real weights, mapped onto the right layers."""
    from tlpipe.vectors.backbones import EFFICIENTNET_LITE, _load_state_dict_file
    from tlpipe.vectors.images import load_rgb
    from tlpipe.vectors.preprocess import eval_transform

    backbone = load_backbone(name)
    assert backbone.name == name and backbone.num_features == 1280
    assert backbone.preprocessing.input_size == input_size
    weights = EFFICIENTNET_LITE[name]
    classifier = timm.create_model(weights.timm_name, pretrained=False).eval()
    classifier.load_state_dict(dict(zip(classifier.state_dict(),
                                        _load_state_dict_file(weights.path()).values(),
                                        strict=True)))
    transform = eval_transform(backbone.preprocessing)
    bees = sorted((demo_root / "val" / "bees").glob("*.jpg"))[1:4]
    images = torch.stack([transform(load_rgb(path)) for path in bees])
    assert images.shape[-1] == input_size
    with torch.inference_mode():
        top = classifier(images).argmax(1).tolist()
    assert top.count(309) >= 2, top
