"""Work across a Ray cluster: slices of a table, each handled by a long-lived Ray actor.

Feature extraction uses it (``tlpipe/stages/features.py``): an actor loads the backbone once,
and each slice of the plan (``features.chunk_vectors`` views) becomes one chunk file in the
shared feature store, written by the node that computed it.

Why Ray core actors, not Ray Data or prefect-ray: the vectors never travel through the driver
or Ray's object store (Ray Data would stream them back: 5 GB per million views), a task
retried after a worker died repeats only its own slice, and the Prefect flow stays the same:
the features task calls this instead of the local loop. prefect-ray would run whole Prefect
tasks on the cluster, which needs the Prefect API reachable from every node; the per-batch
work would still need actors.
"""

from __future__ import annotations

import math
import os
import socket
from collections import Counter
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from tlpipe.config import ClusterConfig, Params
from tlpipe.devices import CPU
from tlpipe.errors import SettingsError


class ClusterError(SettingsError):
    """Ray is missing or its cluster cannot be reached."""


def connect(config: ClusterConfig):
    """Connect to the cluster (once per process); the ray module."""
    try:
        import ray
    except ImportError:
        raise ClusterError("cluster.engine: ray needs Ray on this machine and every node: "
                           "pip install 'tlpipe[ray]' (or set cluster.engine: local)") from None
    if not ray.is_initialized():
        address = None if config.address == "auto" and os.environ.get("RAY_ADDRESS") \
            else config.address
        if address not in (None, "auto"):
            _answers(address, config.connect_timeout_s)
        try:
            ray.init(address=address, log_to_driver=False, logging_level="WARNING")
        except ConnectionError as error:
            raise ClusterError(
                f"cluster.address: {config.address!r}: no Ray cluster there ({error}). Start "
                "one with `ray start --head`, set cluster.address (or RAY_ADDRESS), or set "
                "cluster.engine: local") from None
    return ray


def _answers(address: str, timeout_s: float) -> None:
    """Fail unless ``address`` (host:port, or ray://host:port) accepts a TCP connection within
    ``timeout_s``: Ray itself retries an address that does not answer for minutes, silently."""
    host, separator, port = address.removeprefix("ray://").rpartition(":")
    if not separator or not port.isdigit():
        return  # not host:port: Ray's own error says what is wrong with it
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as error:
        raise ClusterError(
            f"cluster.address: {address!r}: nothing answers there within "
            f"cluster.connect_timeout_s={timeout_s:g}s ({error}). Start the cluster with "
            "`ray start --head` on that host, correct cluster.address (or RAY_ADDRESS), or "
            "set cluster.engine: local") from None


def worker_device(params: Params) -> torch.device:
    """Where the actors compute: a GPU when the cluster has one and ``device`` allows it.
    Decided once for the whole cluster, because the device type is part of every feature key
    (the engine differs)."""
    resources = connect(params.cluster).cluster_resources()
    return torch.device("cuda") if resources.get("GPU") and params.device != "cpu" else CPU


def worker_threads(config: ClusterConfig) -> int:
    return max(1, math.floor(config.cpus_per_worker))


class SliceWorker:
    """A Ray actor: ``make_work()`` once (load a model, open a store), then slices."""

    def __init__(self, make_work: Callable[[], Callable[[object], int]]):
        self.work = make_work()

    def run(self, part: object) -> tuple[str, int]:
        import ray

        return ray.get_runtime_context().get_node_id(), self.work(part)


def run_slices(config: ClusterConfig, parts: Sequence, make_work: Callable,
               device: torch.device, label: str) -> dict[str, int]:
    """Each of ``parts`` through ``make_work()``'s function on some actor of the cluster; the
    total it returned on each node (by Ray node id). ``make_work`` must pickle: a module
    function, or a functools.partial of one."""
    by_node: Counter[str] = Counter()
    if not parts:
        return {}
    ray = connect(config)
    from ray.util import ActorPool

    resources = ray.cluster_resources()
    gpus = config.gpus_per_worker if device.type == "cuda" else 0
    fits = resources.get("GPU", 0) / gpus if gpus else resources.get("CPU", 0) / (
        config.cpus_per_worker)
    count = max(1, min(len(parts), config.max_workers or math.floor(fits)))
    # A worker whose process dies is restarted and its slice retried.
    actor = ray.remote(SliceWorker).options(
        num_cpus=config.cpus_per_worker, num_gpus=gpus, max_restarts=3, max_task_retries=3,
        scheduling_strategy="SPREAD")
    workers = [actor.remote(make_work) for _ in range(count)]
    try:
        results = ActorPool(workers).map_unordered(lambda worker, part: worker.run.remote(part),
                                                   list(parts))
        with tqdm(total=sum(len(part) for part in parts), unit="img",
                  desc=f"{label} (ray, {count} workers)") as progress:
            for node, done in results:
                by_node[node] += done
                progress.update(done)
    finally:
        for worker in workers:
            ray.kill(worker)
    return dict(by_node)
