"""Scale-out: feature extraction in shards that fill one cache (one after another, and as
concurrent task runs of the real flow), and fine-tuning under a real torchrun with two
processes (gloo on this CPU), compared with one process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import copy_slice, make_project
from tlpipe.params_file import load_params
from tlpipe.paths import outputs_for
from tlpipe.stages import audit, features, finetune, head, manifest, validate
from tlpipe.vectors.store import CORRUPT_SUFFIX, FeatureStore


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    base = tmp_path_factory.mktemp("scale-out")
    data = copy_slice(base / "data", {"train": 14, "val": 8})
    # One option (crop, no pixels): the counts below are of the plan alone, which the
    # shards share.
    project = make_project(base / "project", data, {
        "finetune": {"epochs": 1}, "features": {"eval_resize": "crop", "try_pixels": False}})
    params = load_params(project / "params.yaml")
    manifest.compute(params, project)
    validate.compute(params, project)
    return project


@pytest.mark.slow
def test_shards_fill_the_cache_that_one_extraction_reads(project):
    sharded = load_params(project / "params.yaml", {"features": {"shards": 2}})
    parts = [features.fill_shard(sharded, project, index) for index in range(2)]
    assert all(part["computed"] > 0 for part in parts)
    merged = features.compute(sharded, project)
    assert merged["computed"] == 0  # every view was in the cache already
    assert merged["cached"] == sum(part["computed"] for part in parts)

    # The same views computed in one pass, into a cache of their own, match.
    alone = load_params(project / "params.yaml",
                        {"features": {"store": str(project / "cache-alone")}})
    assert features.compute(alone, project)["computed"] == merged["cached"]
    import pandas as pd

    keys = pd.read_parquet(merged["plan"])["key"].unique()
    shared = FeatureStore(str(project / ".cache" / "features")).read(keys)
    single = FeatureStore(str(project / "cache-alone")).read(keys)
    # bf16 autocast: batches of another make-up may round differently in the last bits.
    assert np.abs(shared - single).max() < 0.05, np.abs(shared - single).max()
    with pytest.raises(ValueError, match="shard 2 of 2"):
        features.fill_shard(sharded, project, 2)


@pytest.mark.slow
def test_a_corrupted_chunk_is_set_aside_and_its_vectors_computed_again(project):
    """Bits flipped in a chunk on disk: the next run names it, keeps it aside, computes its
    vectors again and trains on vectors like the ones it lost, not on the damaged ones."""
    import pandas as pd
    import pyarrow.parquet as pq

    location = project / "cache-flipped"
    params = load_params(project / "params.yaml", {"features": {"store": str(location),
                                                                "chunk_vectors": 16}})
    keys = pd.read_parquet(features.compute(params, project)["plan"])["key"].unique()
    store = FeatureStore(str(location))
    before = store.read(keys)
    chunk = Path(store.chunks()[0])
    lost = pq.read_table(chunk, columns=["key"]).num_rows
    data = bytearray(chunk.read_bytes())
    for offset in range(len(data) // 3, len(data) // 3 + 2000, 97):  # inside the vectors
        data[offset] ^= 0x04
    chunk.write_bytes(bytes(data))

    again = features.compute(params, project)
    assert again["computed"] == lost and again["cached"] == len(keys) - lost
    assert len(again["set_aside"]) == 1 and chunk.name in again["set_aside"][0]
    assert chunk.with_name(chunk.name + CORRUPT_SUFFIX).is_file()
    after = FeatureStore(str(location)).read(keys)
    assert np.abs(after - before).max() < 0.05  # bf16: other batches, other last bits


@pytest.mark.slow
def test_torchrun_two_processes_match_one(project):
    params = load_params(project / "params.yaml")
    features.compute(params, project)
    audit.compute(params, project)
    head.compute(params, project)
    one = finetune.compute(params, project)

    two_processes = load_params(project / "params.yaml", {"finetune": {"processes": 2}})
    replayed = []
    two = finetune.compute(two_processes, project,
                          on_epoch_end=lambda epoch, record: replayed.append(epoch))
    assert two["epochs_run"] == 1 and replayed == [0]
    assert two["checkpoint"] != one["checkpoint"]  # keyed by the settings, processes included
    # Each process takes half of every batch and the gradients are averaged: the same
    # training, up to augmentation draws and float rounding.
    assert two["history"][0]["val_loss"] == pytest.approx(one["history"][0]["val_loss"],
                                                          abs=0.05)
    assert two["history"][0]["val_accuracy"] == pytest.approx(
        one["history"][0]["val_accuracy"], abs=0.1)
    from tlpipe.training.model import load_classifier

    model, spec = load_classifier(outputs_for(params, project).model_dir)
    assert spec.classes == ["ants", "bees"] and not model.training


@pytest.mark.slow
def test_the_flow_fills_feature_shards_in_concurrent_task_runs(tmp_path, prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from tlpipe.flows.train import train_flow

    data = copy_slice(tmp_path / "data", {"train": 8, "val": 4})
    project = make_project(tmp_path / "project", data, {
        "features": {"shards": 2}, "finetune": {"epochs": 0},
        "registry": {"model_name": "sharded"}})
    result = train_flow(load_params(project / "params.yaml"), str(project))
    assert result["features"]["computed"] == 0 and result["features"]["cached"] > 0

    flow_run_id = MlflowClient().get_run(result["run_id"]).data.tags["prefect_flow_run_id"]
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    shards = [run for run in runs if run.name.startswith("features_shard")]
    assert len(shards) == 2 and all(run.state.is_completed() for run in shards)
    first, second = shards
    assert first.start_time < second.end_time and second.start_time < first.end_time
