"""A real Ray cluster of two nodes on loopback (`ray start --head` and `ray start --address`,
one CPU each), extracting the demo's features through `cluster.engine: ray`."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest

from tests.conftest import free_port, make_project
from tlpipe.params_file import load_params
from tlpipe.paths import data_root, feature_store
from tlpipe.stages import features, manifest, validate
from tlpipe.vectors.features import extract_features
from tlpipe.vectors.store import PLAIN_VIEW, FeatureStore

RAY = str(Path(sys.executable).with_name("ray"))


def test_an_address_where_nothing_answers_fails_at_once_naming_the_setting():
    """Ray alone retries such an address for minutes without a word."""
    port = free_port()  # nothing listens there
    script = ("from tlpipe.config import ClusterConfig\n"
              "from tlpipe.vectors.cluster import connect\n"
              f"connect(ClusterConfig(engine='ray', address='127.0.0.1:{port}', "
              "connect_timeout_s=2))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0
    assert (f"ClusterError: cluster.address: '127.0.0.1:{port}': nothing answers there within "
            "cluster.connect_timeout_s=2s") in result.stderr


def _ray_processes(temp: Path) -> list[psutil.Process]:
    """Every process of this cluster: Ray passes its session folder to each of them."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if str(temp) in " ".join(process.info["cmdline"] or []):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray", reason="Ray is part of the dev install (tlpipe[ray])")
    temp = Path(tempfile.mkdtemp(prefix="tlray", dir="/tmp"))  # short: Ray's socket paths
    port = free_port()
    # A cluster on loopback for this test alone. Ray 2.60 turns token authentication on for a
    # cluster when ~/.ray/auth_token exists, while its clients default to sending no token:
    # off here, so a token file some other Ray use left behind changes nothing.
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    common = ["--block", "--num-cpus=1", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    log = open(temp / "nodes.log", "w")  # noqa: SIM115
    head = subprocess.Popen(
        [RAY, "start", "--head", f"--port={port}", f"--temp-dir={temp}",
         "--include-dashboard=false", '--resources={"head_node": 1}', *common],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    nodes = [head]
    try:
        address = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while subprocess.run([RAY, "status", f"--address={address}"], env=env,
                             capture_output=True).returncode:
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.skip(f"Ray cannot start a head node on this machine: "
                            f"{(temp / 'nodes.log').read_text()[-2000:]}")
            time.sleep(1)
        nodes.append(subprocess.Popen(
            [RAY, "start", f"--address={address}", '--resources={"second_node": 1}', *common],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        ray.init(address=address, log_to_driver=False)
        while len([node for node in ray.nodes() if node["Alive"]]) < 2:
            assert time.monotonic() < deadline, (temp / "nodes.log").read_text()[-2000:]
            time.sleep(1)
        yield address
    finally:
        ray.shutdown()
        for node in reversed(nodes):
            node.send_signal(signal.SIGTERM)  # `ray start --block` stops its node's processes
        for node in nodes:
            try:
                node.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, signal.SIGKILL)
        for process in _ray_processes(temp):  # anything that outlived its node
            process.kill()
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def project(tmp_path_factory, demo_root, cluster):
    project = make_project(tmp_path_factory.mktemp("ray") / "project", demo_root, {
        # One option (crop, no pixels): the counts below are of the plan alone, which the
        # cluster shares.
        "validation": {"quarantine": ["format"]},
        "features": {"views": 1, "chunk_vectors": 64, "eval_resize": "crop",
                     "try_pixels": False},
        "cluster": {"engine": "ray", "address": cluster}})
    params = load_params(project / "params.yaml")
    manifest.compute(params, project)
    validate.compute(params, project)
    return project


@pytest.mark.slow
def test_both_nodes_extract_and_their_features_equal_the_local_engines(project):
    params = load_params(project / "params.yaml")
    result = features.compute(params, project)
    plan = pd.read_parquet(result["plan"])
    assert result["computed"] == plan["key"].nunique() > 500 and result["cached"] == 0
    assert len(result["nodes"]) == 2 and all(count > 0 for count in result["nodes"].values())
    assert sum(result["nodes"].values()) == result["computed"]
    store = feature_store(params, project)
    assert len(store.chunks()) <= result["computed"] // 64 + 2

    # The same views computed here, in this process, into a store of their own.
    sample = pd.concat([plan[plan["view"] == PLAIN_VIEW].head(24),
                        plan[plan["view"] != PLAIN_VIEW].head(24)])
    local = FeatureStore(str(project / "local-store"))
    from tlpipe.devices import CPU
    from tlpipe.vectors.backbones import backbone_for

    extract_features(sample, data_root(params, project), backbone_for(params.backbone, project),
                     params.features, params.augment, params.seed, local, CPU)
    keys = sample["key"].tolist()
    assert np.array_equal(store.read(keys), local.read(keys))

    again = features.compute(params, project)  # a second run: everything is stored
    assert again["computed"] == 0 and again["nodes"] == {}


@pytest.mark.slow
def test_a_worker_killed_mid_extraction_is_replaced_and_leaves_no_partial_chunk(project):
    params = load_params(project / "params.yaml", {"features": {
        "store": str(project / "store-with-a-kill")}})
    store = feature_store(params, project)
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(features.compute(params, project)))
    thread.start()
    deadline = time.monotonic() + 180
    while not store.chunks():  # the workers are at it
        assert thread.is_alive() and time.monotonic() < deadline
        time.sleep(0.2)
    workers = [process for process in psutil.process_iter(["cmdline"])
               if "ray::SliceWorker" in " ".join(process.info["cmdline"] or [])]
    assert workers, "no Ray worker process found"
    workers[0].send_signal(signal.SIGKILL)
    thread.join(timeout=300)
    assert not thread.is_alive() and outcome, "the extraction did not finish"
    plan = pd.read_parquet(outcome["plan"])
    assert outcome["computed"] == plan["key"].nunique()
    fresh = FeatureStore(store.location)  # no chunk is partial: every key reads back whole
    assert fresh.read(plan["key"].tolist()).shape == (len(plan), 1280)
    assert not [name for name in fresh.fs.ls(fresh.chunks_dir) if not name.endswith(".parquet")
                and not name.endswith(".tmp")]
