"""The feature engines on real demo images: the exported ONNX graph against PyTorch, the
fidelity check and its refusal, and a graph made once."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.conftest import DEMO
from tlpipe.config import FeaturesConfig
from tlpipe.devices import CPU
from tlpipe.params_file import parse_params
from tlpipe.stages.features import feature_spec
from tlpipe.vectors.backbones import load_backbone
from tlpipe.vectors.engines import EngineRefused, cosine_distances, feature_engine, torch_forward
from tlpipe.vectors.features import extract_features, plan_views
from tlpipe.vectors.preprocess import ImageFolderRows, iterate_batches
from tlpipe.vectors.store import FeatureStore


@pytest.fixture(scope="module")
def backbone():
    return load_backbone()


@pytest.fixture(scope="module")
def images(backbone):
    paths = sorted(p.relative_to(DEMO).as_posix() for p in (DEMO / "val").rglob("*.jpg"))[::9]
    dataset = ImageFolderRows.for_evaluation(DEMO, paths, backbone.preprocessing)
    [(batch, _)] = iterate_batches(dataset, batch_size=len(paths))
    return paths, batch


def test_onnxruntime_matches_torch_fp32_and_its_graph_is_made_once(backbone, images,
                                                                     tmp_path):
    _, batch = images
    engine = feature_engine(backbone, FeaturesConfig(engine="onnxruntime"), tmp_path, CPU)
    [graph] = tmp_path.glob("*.onnx")
    made = graph.stat().st_mtime_ns
    exact = torch_forward(backbone, "fp32", channels_last=False)(batch)
    assert cosine_distances(engine.forward(batch), exact).max() < 1e-6
    feature_engine(backbone, FeaturesConfig(engine="onnxruntime"), tmp_path, CPU)
    assert graph.stat().st_mtime_ns == made

    # Changed on disk after its one fidelity check: set aside, exported again, right again.
    (tmp_path / f"{graph.stem}.json").write_text("{}")  # as if checked
    damaged = bytearray(graph.read_bytes())
    damaged[len(damaged) // 2] ^= 0x20
    graph.write_bytes(bytes(damaged))
    engine = feature_engine(backbone, FeaturesConfig(engine="onnxruntime"), tmp_path, CPU)
    assert graph.with_name(graph.name + ".corrupt").read_bytes() == bytes(damaged)
    assert not (tmp_path / f"{graph.stem}.json").exists()  # it will be checked anew
    assert cosine_distances(engine.forward(batch), exact).max() < 1e-6


def manifest_of(paths: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"path": paths, "label": [p.split("/")[1] for p in paths],
                         "split": "val", "sha256": [f"{i:064x}" for i in range(len(paths))]})


def test_the_fidelity_check_is_recorded_once_and_refuses_a_distant_engine(backbone, images,
                                                                            tmp_path):
    paths, _ = images
    # ONNX Runtime float32 is about 2e-12 from torch float32 here: kept under the default
    # limit, refused under one far below it.
    for limit, cache in ((1e-3, "kept"), (1e-15, "refused")):
        params = parse_params({"features": {"max_cosine_distance": limit,
                                            "engine_dir": str(tmp_path / cache / "engines")}})
        plan = plan_views(manifest_of(paths), 1, feature_spec(params, backbone))
        store = FeatureStore(str(tmp_path / cache))

        def extract(params=params, plan=plan, store=store):
            return extract_features(plan, DEMO, backbone, params.features, params.augment,
                                    params.seed, store, CPU)
        if cache == "kept":
            assert extract().computed == len(paths)
            [record] = (tmp_path / cache / "engines").glob("*.json")
            assert json.loads(record.read_text())["max_cosine_distance"] < 1e-6
        else:
            with pytest.raises(EngineRefused, match=r"features.max_cosine_distance=1e-15"):
                extract()
            assert len(store) == 0  # nothing it computed is kept
            assert not list((tmp_path / cache).rglob("*.json"))  # and it stays unchecked
