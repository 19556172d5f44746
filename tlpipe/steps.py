"""The pipeline's steps as plain functions: params and paths in, paths and hashes out.

The Prefect tasks, the CLI and the DVC stages all call these, so each step has exactly one
implementation. Each writes its outputs under ``Outputs`` (fixed paths, atomically).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from safetensors.torch import load_file, save_file

from tlpipe.backbones import Backbone, load_backbone
from tlpipe.config import Params
from tlpipe.fsio import file_sha256, sha256_text, write_atomic, write_json, write_text
from tlpipe.manifest import build_manifest, load_manifest, manifest_fingerprint, save_manifest

PREVIEW_VIEWS = 4  # augmented views beside each plain image in the preview grid


@dataclass(frozen=True)
class Outputs:
    """Where every step writes; the same paths are the DVC stages' outs."""

    root: Path

    manifest = property(lambda self: self.root / "manifest.parquet")
    validated = property(lambda self: self.root / "validation" / "validated.parquet")
    report_md = property(lambda self: self.root / "validation" / "report.md")
    report_json = property(lambda self: self.root / "validation" / "report.json")
    preview = property(lambda self: self.root / "augment" / "preview.png")
    plan = property(lambda self: self.root / "features" / "plan.parquet")
    head_weights = property(lambda self: self.root / "head" / "head.safetensors")
    head_history = property(lambda self: self.root / "head" / "history.json")
    model_dir = property(lambda self: self.root / "model")
    finetune_history = property(lambda self: self.root / "finetune" / "history.json")
    metrics = property(lambda self: self.root / "evaluate" / "metrics.json")
    confusion_png = property(lambda self: self.root / "evaluate" / "confusion_matrix.png")
    curves_png = property(lambda self: self.root / "evaluate" / "learning_curves.png")
    model_card = property(lambda self: self.root / "evaluate" / "model_card.md")
    # Plot data for `dvc plots`: one record per epoch and stage, one record per test image.
    def curves_json(self, stage: str) -> Path:
        return self.root / "evaluate" / f"curves_{stage}.json"

    predictions_json = property(lambda self: self.root / "evaluate" / "predictions.json")


def resolve(project_dir: Path, path: Path) -> Path:
    return path if path.is_absolute() else project_dir / path


def outputs_for(params: Params, project_dir: Path) -> Outputs:
    return Outputs(resolve(project_dir, params.outputs_dir))


def data_root(params: Params, project_dir: Path) -> Path:
    return resolve(project_dir, params.data.root)


@functools.cache
def _cached_backbone(name: str, weights_file: Path | None) -> Backbone:
    return load_backbone(name, weights_file)


def backbone_for(params: Params, project_dir: Path) -> Backbone:
    weights = params.backbone.weights_file
    return _cached_backbone(params.backbone.name,
                            resolve(project_dir, weights) if weights else None)


def classes_of(validated: pd.DataFrame) -> list[str]:
    return sorted(validated["label"].unique())


# --- manifest and validation -------------------------------------------------------------

def make_manifest(params: Params, project_dir: Path) -> dict:
    out = outputs_for(params, project_dir)
    frame = build_manifest(data_root(params, project_dir), params.data, params.split,
                           params.validation.max_pixels)
    save_manifest(frame, out.manifest)
    return {"manifest": str(out.manifest), "fingerprint": manifest_fingerprint(frame),
            "files": len(frame), "classes": frame.attrs["classes"]}


def validate(params: Params, project_dir: Path) -> dict:
    """Run the gate; write the report and the kept rows. Raises ValidationFailed on failure."""
    from tlpipe.validation import ValidationFailed, validate_manifest

    out = outputs_for(params, project_dir)
    report, kept = validate_manifest(load_manifest(out.manifest), params.validation,
                                     params.data.expected_classes)
    write_text(out.report_md, report.to_markdown())
    write_json(out.report_json, report.to_dict())
    if not report.passed:
        out.validated.unlink(missing_ok=True)  # never leave a stale "validated" set behind
        raise ValidationFailed(report)
    save_manifest(kept, out.validated)
    return {"validated": str(out.validated), "fingerprint": manifest_fingerprint(kept),
            "kept": report.kept_files, "quarantined": len(report.quarantined),
            "report": str(out.report_md)}


# --- augmentation and features ----------------------------------------------------------

def preview_augmentation(params: Params, project_dir: Path) -> dict:
    from tlpipe.augment import save_augmentation_preview

    out = outputs_for(params, project_dir)
    rows = max(1, params.augment.preview_images // PREVIEW_VIEWS)
    train = load_manifest(out.validated).query("split == 'train'")
    # Ordering by content hash gives a fixed, unbiased sample; round-robin over classes.
    ranked = train.sort_values("sha256")
    ranked = ranked.assign(rank=ranked.groupby("label").cumcount()).sort_values(["rank", "label"])
    save_augmentation_preview(data_root(params, project_dir), ranked["path"].tolist()[:rows],
                              backbone_for(params, project_dir).preprocessing, params.augment,
                              params.seed, out.preview, PREVIEW_VIEWS)
    return {"preview": str(out.preview)}


def feature_spec(params: Params, backbone: Backbone):
    from tlpipe.features import FeatureSpec

    return FeatureSpec(
        weights_digest=backbone.weights_digest, preprocessing=backbone.preprocessing.to_dict(),
        augment=params.augment.model_dump(mode="json"), precision=params.features.precision,
        channels_last=params.features.channels_last, seed=params.seed,
    )


def _feature_plan(params: Params, project_dir: Path):
    from tlpipe.features import FeatureCache, plan_views

    backbone = backbone_for(params, project_dir)
    plan = plan_views(load_manifest(outputs_for(params, project_dir).validated),
                      params.features.views, feature_spec(params, backbone))
    return plan, backbone, FeatureCache(resolve(project_dir, params.features.cache_dir))


def _fill_cache(params: Params, project_dir: Path, plan, backbone, cache) -> dict:
    from tlpipe.features import extract_features

    stats = extract_features(plan, data_root(params, project_dir), backbone, params.features,
                             params.augment, params.seed, cache)
    return {"computed": stats.computed, "cached": stats.cached, "seconds": stats.seconds,
            "images_per_second": stats.images_per_second,
            "weights_digest": backbone.weights_digest}


def extract_shard(params: Params, project_dir: Path, index: int) -> dict:
    """Fill the feature cache for one of ``features.shards`` parts of the plan. Shards can run
    anywhere that shares the cache folder, in any order; ``extract`` then finds every view
    cached."""
    from tlpipe.features import shard_of

    plan, backbone, cache = _feature_plan(params, project_dir)
    part = shard_of(plan, index, params.features.shards)
    return {"shard": index, **_fill_cache(params, project_dir, part, backbone, cache)}


def extract(params: Params, project_dir: Path) -> dict:
    from tlpipe.features import save_plan

    out = outputs_for(params, project_dir)
    plan, backbone, cache = _feature_plan(params, project_dir)
    stats = _fill_cache(params, project_dir, plan, backbone, cache)
    save_plan(plan, out.plan)
    return {"plan": str(out.plan), **stats}


# --- training ---------------------------------------------------------------------------

def train_head_step(params: Params, project_dir: Path) -> dict:
    from tlpipe.features import FeatureCache, load_split
    from tlpipe.head import train_head

    out = outputs_for(params, project_dir)
    plan = pd.read_parquet(out.plan)
    classes = classes_of(plan)
    cache = FeatureCache(resolve(project_dir, params.features.cache_dir))
    train_x, train_y = load_split(plan, cache, "train", classes)
    val_x, val_y = load_split(plan, cache, "val", classes)
    if len(val_x) == 0:
        raise ValueError("split.val_fraction: the validation split is empty; raise it or add "
                         "images, early stopping needs validation data")
    head, history = train_head(train_x, train_y, val_x, val_y, len(classes), params.head,
                               params.seed)
    state = {k: v.contiguous() for k, v in head.state_dict().items()}
    write_atomic(out.head_weights, lambda path: save_file(state, str(path)))
    write_json(out.head_history, {"epochs": history.epochs, "best_epoch": history.best_epoch})
    best = history.epochs[history.best_epoch]
    return {"head": str(out.head_weights), "sha256": file_sha256(out.head_weights),
            "best_epoch": history.best_epoch, "val_accuracy": best["val_accuracy"],
            "val_loss": best["val_loss"], "history": history.epochs}


def _classifier_spec(params: Params, backbone: Backbone, classes: list[str]):
    from tlpipe.model_io import ModelSpec

    return ModelSpec(backbone=backbone.name, num_features=backbone.num_features, classes=classes,
                     head=params.head.model_dump(mode="json"),
                     preprocessing=backbone.preprocessing.to_dict())


def checkpoint_path(params: Params, project_dir: Path, head_sha256: str,
                    data_fingerprint: str, weights_digest: str) -> Path:
    """Checkpoints are keyed by every input of fine-tuning: a key match means the same run."""
    key = sha256_text(head_sha256, data_fingerprint, weights_digest, params.seed,
                      params.section_digest("finetune", "augment"))
    return resolve(project_dir, params.finetune.checkpoint_dir) / key[:16] / "last.pt"


def finetune_step(params: Params, project_dir: Path, on_epoch_end=None) -> dict:
    from tlpipe.finetune import Classifier, FinetuneData, Shard, finetune
    from tlpipe.head import build_head
    from tlpipe.model_io import save_classifier

    out = outputs_for(params, project_dir)
    validated = load_manifest(out.validated)
    classes = classes_of(validated)
    backbone = backbone_for(params, project_dir)
    head = build_head(params.head, backbone.num_features, len(classes))
    head.load_state_dict(load_file(str(out.head_weights)))
    spec = _classifier_spec(params, backbone, classes)
    if params.finetune.epochs == 0:
        save_classifier(Classifier(backbone.model, head).eval(), spec, out.model_dir)
        write_json(out.finetune_history, {"epochs": [], "best_epoch": -1, "skipped": True})
        return {"model_dir": str(out.model_dir), "epochs_run": 0, "resumed_from_epoch": None,
                "history": []}

    shard = Shard.current()
    if params.finetune.processes > 1 and shard.count == 1:
        from tlpipe.distributed import launch_finetune

        return launch_finetune(params, project_dir, on_epoch_end)

    def rows(split: str) -> tuple[list[str], list[int]]:
        part = validated[validated["split"] == split]
        return part["path"].tolist(), [classes.index(label) for label in part["label"]]

    train_paths, train_labels = rows("train")
    val_paths, val_labels = rows("val")
    data = FinetuneData(data_root(params, project_dir), train_paths, train_labels, val_paths,
                        val_labels, len(classes))
    checkpoint = checkpoint_path(params, project_dir, file_sha256(out.head_weights),
                                 manifest_fingerprint(validated), backbone.weights_digest)
    result = finetune(backbone, head, data, params.finetune, params.augment, params.seed,
                      checkpoint, on_epoch_end)
    if shard.index > 0:
        return {}  # under torchrun the first process writes the outputs
    save_classifier(result.model, spec, out.model_dir)
    write_json(out.finetune_history, {"epochs": result.history.epochs,
                                      "best_epoch": result.history.best_epoch})
    return {"model_dir": str(out.model_dir), "epochs_run": result.epochs_run,
            "resumed_from_epoch": result.resumed_from_epoch, "checkpoint": str(checkpoint),
            "history": result.history.epochs}


# --- evaluation -------------------------------------------------------------------------

def evaluate_step(params: Params, project_dir: Path) -> dict:
    from tlpipe.evaluate import (
        compute_metrics,
        plot_confusion_matrix,
        plot_learning_curves,
        predict_probabilities,
    )
    from tlpipe.model_io import load_classifier

    out = outputs_for(params, project_dir)
    test = load_manifest(out.validated).query("split == 'test'")
    if test.empty:
        raise ValueError("split.test_fraction: the test split is empty; raise it or add images")
    model, spec = load_classifier(out.model_dir)
    probabilities = predict_probabilities(model, data_root(params, project_dir),
                                          test["path"].tolist(), spec.preprocessing_config,
                                          params.evaluation.batch_size)
    y_true = np.array([spec.classes.index(label) for label in test["label"]])
    metrics = compute_metrics(y_true, probabilities, spec.classes,
                              params.evaluation.calibration_bins)
    write_json(out.metrics, metrics)
    plot_confusion_matrix(metrics["confusion_matrix"], spec.classes, out.confusion_png)
    histories = {stage: json.loads(path.read_text())["epochs"]
                 for stage, path in (("head", out.head_history),
                                     ("finetune", out.finetune_history)) if path.is_file()}
    plot_learning_curves(histories, out.curves_png)
    for stage in ("head", "finetune"):
        write_json(out.curves_json(stage), histories.get(stage, []))
    predicted = probabilities.argmax(axis=1)
    write_json(out.predictions_json, [
        {"path": path, "actual": spec.classes[truth], "predicted": spec.classes[guess]}
        for path, truth, guess in zip(test["path"], y_true, predicted, strict=True)])
    return {"metrics": str(out.metrics), "confusion_matrix": str(out.confusion_png),
            "learning_curves": str(out.curves_png), **{k: metrics[k] for k in
                                                        ("accuracy", "macro_f1", "ece")}}


def write_model_card(params: Params, project_dir: Path, facts: dict) -> Path:
    out = outputs_for(params, project_dir)
    metrics = json.loads(out.metrics.read_text())
    per_class = "\n".join(
        f"| {name} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {v['support']} |"
        for name, v in metrics["per_class"].items())
    card = f"""# Model card: {params.registry.model_name}

- Backbone: {params.backbone.name} (weights digest {facts.get('weights_digest', '?')[:16]})
- Classes: {', '.join(metrics['classes'])}
- Data version (manifest fingerprint): {facts.get('data_fingerprint', '?')}
- Params hash: {params.digest()[:16]}; git commit: {facts.get('git_commit', '?')}
- Training: head ({params.head.kind}) on cached features, then fine-tuning of the top
  {params.finetune.unfreeze_blocks} blocks for up to {params.finetune.epochs} epochs.

## Test split ({metrics['n_test']} images, never used to choose anything)
accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f},
expected calibration error {metrics['ece']:.4f}

| class | precision | recall | F1 | support |
|---|---|---|---|---|
{per_class}

## Intended use and limits
Classifies photos into the classes above. Inputs outside those classes still get one of
them; check `probability` before acting on a prediction.
"""
    return write_text(out.model_card, card)
