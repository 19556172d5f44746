"""features: the frozen backbone's feature vectors for every image view, in the feature store.

Writes the plan (one row per vector: image, split, view, cache key) and what made the vectors:
the backbone with the evaluation preprocessing (``features.eval_resize``), or the images' own
pixels (``features.try_pixels``), chosen by the cross-validated probe where there is a choice. The
store is content-addressed, so a view computed by any earlier run, shard or experiment is
reused.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import mlflow
import pandas as pd
import torch
from mlflow.tracking import MlflowClient

from tlpipe import tags
from tlpipe.config import Params
from tlpipe.data.layout import modality
from tlpipe.data.manifest import load_manifest
from tlpipe.devices import resolve_device
from tlpipe.fsio import write_json
from tlpipe.ops.tracking import RunContext, flat_params, stage_run
from tlpipe.paths import data_root, feature_store, outputs_for
from tlpipe.training.cached import Features
from tlpipe.training.heads import class_order
from tlpipe.training.ladder import probe_score
from tlpipe.vectors import cluster
from tlpipe.vectors.backbones import (
    PIXELS,
    Backbone,
    backbone_for,
    chosen_backbone,
    load_backbone,
)
from tlpipe.vectors.features import (
    ExtractionStats,
    FeatureSpec,
    extract_features,
    missing_views,
    plan_views,
    save_plan,
    shard_of,
    spec_on,
)
from tlpipe.vectors.store import FeatureStore
from tlpipe.vectors.text_encoder import encoder_for
from tlpipe.vectors.text_features import fill_text_vectors, plan_text_views

STAGE = __name__.rpartition(".")[2]


def extraction_device(params: Params) -> torch.device:
    """Where the backbone runs: this machine's device, or the Ray cluster's workers'."""
    if params.cluster.engine == "ray":
        return cluster.worker_device(params)
    return resolve_device(params.device)


def feature_spec(params: Params, backbone: Backbone) -> FeatureSpec:
    """The spec of the vectors this stage makes: on the extraction device."""
    return spec_on(params, backbone, extraction_device(params))


class _Planned(NamedTuple):
    plan: pd.DataFrame  # the views to extract
    backbone: Backbone  # set to the evaluation preprocessing chosen (features.eval_resize)
    store: FeatureStore
    choice: dict  # what the choice was based on
    choice_computed: int  # views extracted to make the choice


def _plan(params: Params, project: Path, manifest: pd.DataFrame) -> _Planned:
    store = feature_store(params, project)
    backbone, choice, choice_computed = _choose_preprocessing(params, project, manifest, store)
    plan = plan_views(manifest, params.features.views, feature_spec(params, backbone))
    return _Planned(plan, backbone, store, choice, choice_computed)


def _choose_preprocessing(params: Params, project: Path, manifest: pd.DataFrame,
                          store: FeatureStore) -> tuple[Backbone, dict, int]:
    """The options (the backbone's crop and resize under ``eval_resize: auto``, the images'
    own pixels under ``try_pixels``), each scored by the cross-validated logistic probe on
    one plain view of every training and validation image (never a test image); the best
    wins, the earlier option on a tie (the backbone's pretraining recipe first)."""
    setting = params.features.eval_resize
    own = backbone_for(params.backbone, project)
    resizes = ("crop", "resize") if setting == "auto" else (setting,)
    options = {option: dataclasses.replace(own, preprocessing=dataclasses.replace(
        own.preprocessing, resize=option)) for option in resizes}
    if params.features.try_pixels and own.name != PIXELS:
        options[PIXELS] = load_backbone(PIXELS)
    scores, computed = {}, 0
    if len(options) > 1:
        seen = manifest[manifest["split"].isin(["train", "val"])]
        classes = class_order(seen["label"])
        for option, backbone in options.items():
            plan = plan_views(seen.assign(split="plain"), 1, feature_spec(params, backbone))
            computed += _fill(params, project, plan, backbone, store)["computed"]
            scores[option] = probe_score(Features.from_plan(plan, store, "plain", classes),
                                         len(classes), params.seed)
    ranked = list(options)
    chosen = max(ranked, key=lambda option: (scores.get(option, 0.0), -ranked.index(option)))
    backbone = options[chosen]
    return backbone, {"eval_resize": setting, "backbone": backbone.name,
                      "chosen": backbone.preprocessing.to_dict(), "probe_scores": scores}, computed


def _fill(params: Params, project: Path, plan: pd.DataFrame, backbone: Backbone,
          store: FeatureStore) -> dict:
    device = extraction_device(params)
    nodes = None
    if params.cluster.engine == "ray":
        start = time.perf_counter()
        missing = missing_views(plan, store)
        size = params.features.chunk_vectors  # a slice per chunk file
        nodes = cluster.run_slices(
            params.cluster, [missing.iloc[i:i + size] for i in range(0, len(missing), size)],
            functools.partial(_extraction_work, params, project,
                              {"backbone": backbone.name,
                               "chosen": backbone.preprocessing.to_dict()},
                              device.type, cluster.worker_threads(params.cluster)),
            device, "features")
        stats = ExtractionStats(len(missing), len(plan) - len(missing),
                                time.perf_counter() - start)
    else:
        stats = extract_features(plan, data_root(params, project), backbone, params.features,
                                 params.augment, params.seed, store, device)
    compacted = store.compact() if stats.computed else 0
    return {"computed": stats.computed, "cached": stats.cached, "seconds": stats.seconds,
            "images_per_second": stats.images_per_second, "nodes": nodes,
            "chunks_compacted": compacted, "weights_digest": backbone.weights_digest}


def _extraction_work(params: Params, project: Path, choice: dict, device_type: str,
                     threads: int) -> Callable[[pd.DataFrame], int]:
    """What a Ray worker does, made once on it: the backbone loaded, then slices of the plan
    into the shared store. Same code, engine and precision as here, so the same vectors."""
    torch.set_num_threads(threads)  # the engines size their thread pools from this
    backbone = chosen_backbone(choice, params.backbone, project)
    store, root, device = feature_store(params, project), data_root(params, project), \
        torch.device(device_type)

    def extract(part: pd.DataFrame) -> int:
        return extract_features(part, root, backbone, params.features, params.augment,
                                params.seed, store, device).computed
    return extract


def _text_features(params: Params, project: Path, manifest: pd.DataFrame,
                   shard: int | None = None) -> dict:
    """The text path: every view of every text encoded once into the store (on this machine:
    the Ray engine is for images), and the plan written; or, with ``shard``, that shard's
    part of the store filled."""
    out = outputs_for(params, project)
    encoder = encoder_for(params.text, project)
    store = feature_store(params, project)
    plan = plan_text_views(manifest, params.features.views, encoder, params.text, params.seed)
    if shard is not None:
        plan = shard_of(plan, shard, params.features.shards)
    stats = fill_text_vectors(plan, encoder, store, params.text, resolve_device(params.device))
    truncated = stats.truncated
    compacted = store.compact() if stats.computed else 0
    choice = {"modality": "text", "backbone": params.text.encoder,
              "encoder_folder": params.text.encoder_folder and str(params.text.encoder_folder),
              "max_tokens": encoder.max_tokens, "chosen": {}, "probe_scores": {},
              "truncated": len(truncated), "truncated_examples": truncated[:10]}
    if shard is None:
        save_plan(plan.drop(columns="text"), out.plan)
        write_json(out.preprocessing, choice)
    return {"plan": str(out.plan), "preprocessing": choice, "choice_computed": 0,
            "computed": stats.computed, "cached": stats.cached, "seconds": stats.seconds,
            "images_per_second": stats.computed / stats.seconds if stats.seconds else 0.0,
            "nodes": None,
            "chunks_compacted": compacted, "weights_digest": encoder.digest,
            "set_aside": list(store.set_aside), **({"shard": shard} if shard is not None else {})}


def fill_shard(params: Params, project: Path, index: int) -> dict:
    """Fill the store for part ``index`` of ``features.shards``. Shards can run anywhere that
    shares the store, in any order; ``compute`` then finds every view cached."""
    manifest = load_manifest(outputs_for(params, project).validated)
    if modality(manifest) == "text":
        return _text_features(params, project, manifest, shard=index)
    plan, backbone, store, _, _ = _plan(params, project, manifest)
    part = shard_of(plan, index, params.features.shards)
    return {"shard": index, **_fill(params, project, part, backbone, store)}


def compute(params: Params, project: Path) -> dict:
    """Fill the store and write the plan (``features.views: 0``, as an audit alone runs it,
    plans the plain views only)."""
    out = outputs_for(params, project)
    manifest = load_manifest(out.validated)
    if modality(manifest) == "text":
        return _text_features(params, project, manifest)
    plan, backbone, store, choice, choice_computed = _plan(params, project, manifest)
    stats = _fill(params, project, plan, backbone, store)
    save_plan(plan, out.plan)
    write_json(out.preprocessing, choice)
    return {"plan": str(out.plan), "preprocessing": choice, "choice_computed": choice_computed,
            **stats, "set_aside": list(store.set_aside)}


def _described(choice: dict) -> str:
    if choice.get("modality") == "text":
        return f"text encoder {choice['backbone']}"
    if choice["backbone"] == PIXELS:
        return "the images' own pixels (32x32 grey, no pretrained backbone)"
    return f"{choice['backbone']} with {choice['chosen']['resize']} to its input"


def run(context: RunContext, params: Params, project: Path) -> dict:
    with stage_run(context, STAGE):
        result = compute(params, project)
        mlflow.log_params({**flat_params("features", params.features),
                           "backbone.name": params.backbone.name})
        mlflow.log_metrics({k: result[k] for k in ("computed", "cached", "seconds",
                                                    "images_per_second")})
        MlflowClient().set_tag(context.parent_run_id, tags.WEIGHTS_DIGEST,
                               result["weights_digest"])
        choice = result["preprocessing"]
        mlflow.set_tags({"features.eval_resize": choice["chosen"].get("resize", "none"),
                         "features.backbone": choice["backbone"]})
        if choice["probe_scores"]:
            mlflow.log_metrics({f"probe_{option}": value
                                for option, value in choice["probe_scores"].items()})
            scored = ", ".join(f"{option} {value:.4f}"
                               for option, value in choice["probe_scores"].items())
            print(f"features: {_described(choice)} chosen by the cross-validated logistic "
                  f"probe on train + val ({scored}; {result['choice_computed']} plain views "
                  "computed to choose)")
        if result["nodes"]:
            mlflow.log_dict(result["nodes"], "ray_nodes.json")
        for why in result["set_aside"]:
            print(f"features: WARNING: {why}; set aside as *.corrupt (kept, not deleted) and "
                  "its vectors computed anew")
        if result["set_aside"]:
            mlflow.set_tag("features.chunks_set_aside", len(result["set_aside"]))
        if choice.get("truncated"):
            mlflow.log_metric("texts_truncated", choice["truncated"])
            print(f"features: {choice['truncated']} texts are longer than the encoder's "
                  f"{choice['max_tokens']} tokens: it reads their start only (first: "
                  f"{', '.join(choice['truncated_examples'][:3])})")
        print(f"features: {result['computed']} computed, {result['cached']} from the store "
              f"in {result['seconds']:.1f}s"
              + (f" on {len(result['nodes'])} Ray node(s)" if result["nodes"] else ""))
        return result
