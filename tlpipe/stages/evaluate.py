"""evaluate: the model on the held-out test split: metrics, confusion matrix, learning curves,
every image's probabilities and a page of the mistakes.

The test split is scored here and nowhere earlier, so nothing upstream can be tuned on it.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
from mlflow.tracking import MlflowClient

from tlpipe import tags
from tlpipe.config import Params
from tlpipe.data.layout import items_called, modality, shown_from
from tlpipe.data.manifest import load_manifest
from tlpipe.devices import resolve_device
from tlpipe.fsio import write_json
from tlpipe.metrics import compute_metrics, decide, flat_metrics, small_split_warning
from tlpipe.ops.tracking import RunContext, log_to_run_and_parent, stage_run
from tlpipe.paths import data_root, outputs_for
from tlpipe.reports.mistakes import write_mistakes_page
from tlpipe.reports.plots import (
    curve_points,
    plot_confusion_matrix,
    plot_learning_curves,
)
from tlpipe.serving.inference import prediction_frame, probabilities_of
from tlpipe.training.model import load_classifier

STAGE = __name__.rpartition(".")[2]


def prediction_rows(paths: list[str], y_true: np.ndarray, probabilities: np.ndarray,
                    classes: list[str], thresholds: list[float] | None = None) -> list[dict]:
    """One record per test image: its path, true and predicted class, and the probabilities
    (the columns `tlpipe predict` writes)."""
    frame = prediction_frame(probabilities, classes, thresholds).rename(
        columns={"label": "predicted"})
    frame.insert(0, "actual", [classes[truth] for truth in y_true])
    frame.insert(0, "path", paths)
    return frame.round(6).to_dict(orient="records")


def compute(params: Params, project: Path) -> dict:
    out = outputs_for(params, project)
    validated = load_manifest(out.validated)
    test = validated.query("split == 'test'")
    if test.empty:
        raise ValueError("split.test_fraction: the test split is empty; raise it or add data")
    model, spec = load_classifier(out.model_dir)
    kind = modality(validated)
    probabilities = probabilities_of(
        model, spec, data_root(params, project), test["path"].tolist(),
        test["text"].tolist() if kind == "text" else None, params, resolve_device(params.device))
    y_true = np.array([spec.classes.index(label) for label in test["label"]])
    metrics = compute_metrics(y_true, probabilities, spec.classes,
                              params.evaluation.calibration_bins, spec.thresholds)
    metrics["small_test_split"] = small_split_warning(
        test["label"].tolist(), int((decide(probabilities, spec.thresholds) == y_true).sum()),
        params.evaluation.min_test_images, params.evaluation.min_test_per_class,
        items_called(kind))
    write_json(out.metrics, metrics)
    plot_confusion_matrix(metrics["confusion_matrix"], spec.classes, out.confusion_png)
    # The PNG and the DVC plots' data are the same points, so they cannot disagree.
    curves = {stage: curve_points(json.loads(path.read_text()))
              for stage, path in (("head", out.head_history),
                                  ("finetune", out.finetune_history)) if path.is_file()}
    plot_learning_curves(curves, out.curves_png)
    for stage in ("head", "finetune"):
        write_json(out.curves_json(stage), curves.get(stage, []))
    predictions = prediction_rows(test["path"].tolist(), y_true, probabilities, spec.classes,
                                  spec.thresholds)
    write_json(out.predictions_json, predictions)
    write_mistakes_page(predictions, spec.classes,
                        shown_from(validated, data_root(params, project)), out.mistakes_html,
                        params.evaluation.mistakes_shown)
    return {"metrics": str(out.metrics), "confusion_matrix": str(out.confusion_png),
            "learning_curves": str(out.curves_png), "mistakes": str(out.mistakes_html),
            "predictions": str(out.predictions_json), **{k: metrics[k] for k in
                                                        ("accuracy", "macro_f1", "ece",
                                                         "small_test_split")}}


def run(context: RunContext, params: Params, project: Path) -> dict:
    with stage_run(context, STAGE):
        result = compute(params, project)
        headline = flat_metrics(json.loads(Path(result["metrics"]).read_text()))
        mlflow.log_metrics(headline)
        client = MlflowClient()
        for name, value in headline.items():
            client.log_metric(context.parent_run_id, name, value)
        for key in ("metrics", "confusion_matrix", "learning_curves", "mistakes",
                    "predictions"):
            log_to_run_and_parent(context, result[key], "evaluation")
        print(f"test accuracy {result['accuracy']:.4f}, macro-F1 {result['macro_f1']:.4f}, "
              f"ECE {result['ece']:.4f}")
        if result["small_test_split"]:
            for run_id in (mlflow.active_run().info.run_id, context.parent_run_id):
                client.set_tag(run_id, tags.SMALL_TEST_SPLIT, result["small_test_split"])
            print(f"WARNING: {result['small_test_split']}")
        return {**result, "headline": headline}
