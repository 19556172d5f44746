"""Scale-out: feature extraction in shards that fill one cache, and fine-tuning under a real
torchrun with two processes (gloo on this CPU), compared with one process."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import copy_slice, make_project
from tlpipe import steps
from tlpipe.config import load_params
from tlpipe.features import FeatureCache


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    base = tmp_path_factory.mktemp("scale-out")
    data = copy_slice(base / "data", {"train": 14, "val": 8})
    project = make_project(base / "project", data, {"finetune": {"epochs": 1}})
    params = load_params(project / "params.yaml")
    steps.make_manifest(params, project)
    steps.validate(params, project)
    return project


@pytest.mark.slow
def test_shards_fill_the_cache_that_one_extraction_reads(project):
    sharded = load_params(project / "params.yaml", {"features": {"shards": 2}})
    parts = [steps.extract_shard(sharded, project, index) for index in range(2)]
    assert all(part["computed"] > 0 for part in parts)
    merged = steps.extract(sharded, project)
    assert merged["computed"] == 0  # every view was in the cache already
    assert merged["cached"] == sum(part["computed"] for part in parts)

    # The same views computed in one pass, into a cache of their own, match.
    alone = load_params(project / "params.yaml",
                        {"features": {"cache_dir": str(project / "cache-alone")}})
    assert steps.extract(alone, project)["computed"] == merged["cached"]
    import pandas as pd

    keys = pd.read_parquet(merged["plan"])["key"].unique()
    shared = FeatureCache(project / ".cache" / "features")
    single = FeatureCache(project / "cache-alone")
    differences = [np.abs(shared.get(key) - single.get(key)).max() for key in keys]
    # bf16 autocast: batches of another make-up may round differently in the last bits.
    assert max(differences) < 0.05, max(differences)
    with pytest.raises(ValueError, match="shard 2 of 2"):
        steps.extract_shard(sharded, project, 2)


@pytest.mark.slow
def test_torchrun_two_processes_match_one(project):
    params = load_params(project / "params.yaml")
    steps.extract(params, project)
    steps.train_head_step(params, project)
    one = steps.finetune_step(params, project)

    two_processes = load_params(project / "params.yaml", {"finetune": {"processes": 2}})
    replayed = []
    two = steps.finetune_step(two_processes, project,
                              on_epoch_end=lambda epoch, record: replayed.append(epoch))
    assert two["epochs_run"] == 1 and replayed == [0]
    assert two["checkpoint"] != one["checkpoint"]  # keyed by the settings, processes included
    # Each process takes half of every batch and the gradients are averaged: the same
    # training, up to augmentation draws and float rounding.
    assert two["history"][0]["val_loss"] == pytest.approx(one["history"][0]["val_loss"],
                                                          abs=0.05)
    assert two["history"][0]["val_accuracy"] == pytest.approx(
        one["history"][0]["val_accuracy"], abs=0.1)
    from tlpipe.model_io import load_classifier

    model, spec = load_classifier(steps.outputs_for(params, project).model_dir)
    assert spec.classes == ["ants", "bees"] and not model.training
