"""The device setting: what it resolves to, what runs where, and the GPU checks.

The GPU tests run only where PyTorch sees a GPU and are skipped (not passed) elsewhere. Where
a test below pretends a GPU exists (``torch.cuda.is_available`` patched), it checks only the
choice made, never a computation: that part cannot run on a machine without one.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.conftest import DEMO
from tlpipe.config import FeaturesConfig
from tlpipe.devices import CPU, resolve_device
from tlpipe.errors import SettingsError
from tlpipe.params_file import ConfigError, parse_params
from tlpipe.paths import outputs_for
from tlpipe.training.distributed import backend_for
from tlpipe.vectors.backbones import load_backbone
from tlpipe.vectors.engines import (
    cosine_distances,
    engine_identity,
    engine_name,
    feature_engine,
    placed,
)
from tlpipe.vectors.preprocess import ImageFolderRows, iterate_batches

CUDA = torch.device("cuda")
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU on this machine")


def test_a_device_that_is_not_one_names_the_setting():
    with pytest.raises(ConfigError, match=r"device: .*expected auto, cpu, cuda or cuda:N"):
        parse_params({"device": "gpu"})
    with pytest.raises(SettingsError, match=r"TLPIPE_DEVICE: 'cuda1' is not a device"):
        resolve_device("cuda1", "TLPIPE_DEVICE")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_auto_is_the_cpu_and_cuda_is_refused_by_name():
    assert resolve_device("auto") == CPU
    with pytest.raises(SettingsError, match=r"device: 'cuda:1', but PyTorch sees no GPU"):
        resolve_device("cuda:1")


def test_cpu_stays_the_cpu_on_a_gpu_machine_and_auto_takes_the_gpu(monkeypatch):
    # Pretends a GPU is there: only the choice is checked (see the module's docstring).
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_device("cpu") == CPU and resolve_device("auto") == CUDA
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(SettingsError, match=r"has 2 GPU\(s\), cuda:0 to cuda:1"):
        resolve_device("cuda:2")
    # The engine, its cache identity and the fine-tuning backend follow the device chosen.
    config = FeaturesConfig()
    assert engine_name(config, CPU) == "onnxruntime" and engine_name(config, CUDA) == "torch"
    assert backend_for("auto", CPU) == "gloo" and backend_for("auto", CUDA) == "nccl"
    torch_config = FeaturesConfig(engine="torch")
    assert engine_identity(torch_config, CPU) != engine_identity(torch_config, CUDA)


@pytest.fixture(scope="module")
def demo_batch():
    backbone = load_backbone()
    paths = sorted(p.relative_to(DEMO).as_posix() for p in (DEMO / "val").rglob("*.jpg"))[::5]
    dataset = ImageFolderRows.for_evaluation(DEMO, paths, backbone.preprocessing)
    [(batch, _)] = iterate_batches(dataset, batch_size=len(paths))
    return backbone, batch


@needs_gpu
def test_gpu_features_agree_with_the_cpu_engine(demo_batch, tmp_path):
    backbone, batch = demo_batch
    config = FeaturesConfig(engine_dir=tmp_path)
    on_cpu = feature_engine(backbone, config, tmp_path, CPU).forward(batch)
    with placed(backbone.model, CUDA, config.channels_last):
        on_gpu = feature_engine(backbone, config, tmp_path, CUDA).forward(batch)
    distances = cosine_distances(on_gpu, on_cpu)
    print(f"GPU ({engine_identity(config, CUDA)}) vs CPU ({engine_identity(config, CPU)}): "
          f"1-cos max {distances.max():.2e}, mean {distances.mean():.2e}")
    assert distances.max() < 1e-3


@needs_gpu
def test_forced_cpu_leaves_the_gpu_untouched(demo_batch, tmp_path):
    backbone, batch = demo_batch
    torch.cuda.reset_peak_memory_stats()
    config = FeaturesConfig(engine="torch", engine_dir=tmp_path)
    device = resolve_device(parse_params({"device": "cpu"}).device)
    with placed(backbone.model, device, config.channels_last):
        features = feature_engine(backbone, config, tmp_path, device).forward(batch)
    assert np.isfinite(features).all() and next(backbone.model.parameters()).device == CPU
    assert torch.cuda.max_memory_allocated() == 0


@needs_gpu
def test_the_demo_on_the_gpu_scores_within_one_test_image_of_the_cpu(tmp_path):
    """The demo's stages with their shipped settings, once per device: test accuracy may
    differ by one image at most (bf16 on the GPU, onnxruntime float32 on the CPU)."""
    from tlpipe.stages import audit, evaluate, features, finetune, head, manifest, validate

    results = {}
    for device in ("cpu", "cuda"):
        project = tmp_path / device
        params = parse_params({
            "device": device, "data": {"root": str(DEMO)},
            "validation": {"quarantine": ["format"]},
            "features": {"store": str(project / "features"), "engine_dir": str(tmp_path)},
            "tracking": {"tracking_uri": f"sqlite:///{project}/mlflow.db"}})
        for stage in (manifest, validate, features, audit, head, finetune):
            stage.compute(params, project)
        results[device] = evaluate.compute(params, project)
    test_images = len(json.loads(outputs_for(params, project).predictions_json.read_text()))
    print({device: result["accuracy"] for device, result in results.items()})
    assert abs(results["cuda"]["accuracy"] - results["cpu"]["accuracy"]) * test_images <= 1.01
