"""Engines that run the frozen backbone for feature extraction.

``torch`` runs the backbone in PyTorch on the device, at ``features.precision`` and memory
format. ``onnxruntime`` runs the same backbone exported once to ONNX, in float32 on the CPU
(``auto``, the default, picks it on CPUs and torch on GPUs): on these CPUs it
is several times faster than PyTorch's bf16 eager forward and closer to the float32 features
(``bench/engines.py`` prints both). The exported graph is keyed by what decides it (the
weights, the input size, the exporter and opset) and kept in ``features.engine_dir``, so it
is made once per machine. Before an exported engine's first use its features are compared with
PyTorch float32 on real images; one further than ``features.max_cosine_distance`` is refused.
(Torch in bf16 is about 1.3e-3 from float32 here: a precision the user picks knowingly.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from tlpipe.config import FeaturesConfig
from tlpipe.devices import CPU
from tlpipe.errors import SettingsError
from tlpipe.fsio import atomic_path, file_sha256, set_aside, sha256_text, write_json, write_text
from tlpipe.vectors.backbones import Backbone

OPSET = 18


class EngineRefused(SettingsError):
    """An engine whose features are not the float32 features: nothing it computed is kept."""


def engine_name(config: FeaturesConfig, device: torch.device) -> str:
    if config.engine != "auto":
        return config.engine
    return "torch" if device.type == "cuda" else "onnxruntime"


def engine_placement(config: FeaturesConfig, device: torch.device
                     ) -> tuple[torch.device, bool]:
    """Where the backbone's PyTorch module sits while the engine runs, and whether it is
    channels-last: on ``device`` for the torch engine, on the CPU in its own format for an
    exported one (whose reference forward pass is torch float32 on the CPU)."""
    if engine_name(config, device) == "torch":
        return device, config.channels_last
    return CPU, False


def engine_identity(config: FeaturesConfig, device: torch.device) -> str:
    """What, besides the image and the weights, decides an engine's numbers: part of every
    feature's cache key, so features of different engines, precisions or devices never mix."""
    if engine_name(config, device) == "onnxruntime":
        return "onnxruntime-fp32-cpu"  # the onnxruntime package runs on the CPU only
    return (f"torch-{precision_on(device, config.precision)}"
            + ("-channels_last" if config.channels_last else "") + f"-{device.type}")


@dataclass
class Engine:
    identity: str
    forward: Callable[[torch.Tensor], np.ndarray]  # normalised NCHW batch -> float32 features
    checked: Path | None  # where the fidelity check is recorded; None: no check needed
    pin_memory: bool = False  # batches in page-locked memory: the engine copies them to a GPU


def autocast(device_type: str, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device_type``, or nothing for fp32: feature extraction and
    fine-tuning choose their precision the same way."""
    return (torch.autocast(device_type, dtype=torch.bfloat16) if precision == "bf16"
            else contextlib.nullcontext())


def precision_on(device: torch.device, precision: str) -> str:
    """bf16 where the device computes in it; GPUs without bf16 (before Ampere) run fp32."""
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "fp32"
    return precision


def to_device(batch: torch.Tensor, device: torch.device, channels_last: bool = False
              ) -> torch.Tensor:
    """A batch on ``device`` (asynchronously from pinned memory), in the memory format the
    model runs in."""
    batch = batch.to(device, non_blocking=batch.is_pinned())
    return batch.contiguous(memory_format=torch.channels_last) if channels_last else batch


@contextlib.contextmanager
def placed(model: torch.nn.Module, device: torch.device, channels_last: bool
           ) -> Iterator[None]:
    """``model`` on ``device`` and in its memory format for the duration only: the backbone is
    shared with fine-tuning in one process, and a model left channels-last rounds its
    convolutions differently there."""
    model.to(device, memory_format=torch.channels_last if channels_last
             else torch.contiguous_format)
    try:
        yield
    finally:
        model.to("cpu", memory_format=torch.contiguous_format)


def torch_forward(backbone: Backbone, precision: str, channels_last: bool,
                  device: torch.device = CPU) -> Callable[[torch.Tensor], np.ndarray]:
    """The backbone's forward pass; the caller places the model (``placed``)."""
    def forward(batch: torch.Tensor) -> np.ndarray:
        batch = to_device(batch, device, channels_last)
        with torch.inference_mode(), autocast(device.type, precision):
            return backbone.model(batch).float().cpu().numpy()
    return forward


def feature_engine(backbone: Backbone, config: FeaturesConfig, engine_dir: Path,
                   device: torch.device) -> Engine:
    """The configured engine for ``backbone`` on ``device``; an ONNX graph is exported on
    first use."""
    identity = engine_identity(config, device)
    if engine_name(config, device) == "torch":  # its precision is the user's documented choice
        return Engine(identity, torch_forward(backbone, precision_on(device, config.precision),
                                              config.channels_last, device), None,
                      pin_memory=device.type == "cuda")
    graph = _exported(backbone, engine_dir)
    return Engine(identity, _onnxruntime_forward(graph), graph.with_suffix(".json"))


def _exported(backbone: Backbone, engine_dir: Path) -> Path:
    """The backbone's ONNX graph, exported once. Its digest is kept beside it: a graph that
    no longer matches (changed on disk after its one fidelity check) is set aside as
    ``*.corrupt`` and exported again, with its check."""
    size = backbone.preprocessing.input_size
    key = sha256_text(backbone.weights_digest, size, torch.__version__, OPSET)[:16]
    graph = engine_dir / f"{backbone.name.replace('/', '_')}-{key}.onnx"
    digest = graph.with_name(graph.name + ".sha256")
    if graph.is_file():
        if digest.is_file() and digest.read_text().strip() == file_sha256(graph):
            return graph
        if digest.is_file():
            kept = set_aside(graph)
            tqdm.write(f"features: WARNING: {graph} does not match its digest; set aside as "
                       f"{kept.name} and exported again")
        graph.with_suffix(".json").unlink(missing_ok=True)  # its fidelity check goes with it
    graph.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(2, 3, size, size)
    with atomic_path(graph) as temporary:
        torch.onnx.export(backbone.model.eval(), (example,), str(temporary),
                          input_names=["pixels"], output_names=["features"],
                          opset_version=OPSET, dynamo=True, external_data=False, verbose=False,
                          dynamic_shapes=({0: torch.export.Dim("batch")},))
    write_text(digest, file_sha256(graph))
    return graph


def _onnxruntime_forward(graph: Path) -> Callable[[torch.Tensor], np.ndarray]:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    # Busy-waiting threads would take the cores the image decoders need between batches.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(str(graph), options,
                                           providers=["CPUExecutionProvider"])

    def forward(batch: torch.Tensor) -> np.ndarray:
        return session.run(None, {"pixels": batch.contiguous().numpy()})[0]
    return forward


def cosine_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1 - cos per row, in float64."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return 1.0 - (a * b).sum(axis=1) / np.maximum(norms, 1e-12)


def check_fidelity(engine: Engine, backbone: Backbone, batch: torch.Tensor,
                   config: FeaturesConfig) -> None:
    """Compare ``engine`` with PyTorch float32 on ``batch`` (real images) once; record the
    result beside the engine, or refuse the engine."""
    if engine.checked is None or engine.checked.is_file():
        return
    reference = torch_forward(backbone, "fp32", channels_last=False)(batch)
    worst = float(cosine_distances(engine.forward(batch), reference).max())
    if worst > config.max_cosine_distance:
        raise EngineRefused(
            f"features.engine {config.engine!r} ({engine.identity}): its features differ from "
            f"PyTorch float32 by 1-cos {worst:.2e} on {len(batch)} images, more than "
            f"features.max_cosine_distance={config.max_cosine_distance:g}. Nothing it computed "
            "was kept; use features.engine: torch with features.precision: fp32")
    write_json(engine.checked, {"engine": engine.identity, "images": len(batch),
                                "max_cosine_distance": worst,
                                "threshold": config.max_cosine_distance})
