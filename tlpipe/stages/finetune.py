"""finetune: the backbone with the chosen head, as deep and at the learning rate that a search
on validation prefers (``training.finetune``), early stopping; kept only if it beats the head
on validation, otherwise the head on the frozen backbone is the model.

With ``finetune.epochs: 0``, or a k-nearest-neighbours head (nothing to train), the head on the
frozen backbone is the model. With ``finetune.processes`` above 1 the same fine-tuning runs
under torchrun, each process a share of every batch. A checkpoint per epoch, keyed by every
input, lets a killed run resume.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from tlpipe import tags
from tlpipe.config import Params
from tlpipe.data.manifest import load_manifest, manifest_fingerprint
from tlpipe.data.quarantine import without_quarantined
from tlpipe.devices import resolve_device
from tlpipe.fsio import file_sha256, sha256_text, write_json
from tlpipe.ops.tracking import RunContext, flat_params, log_history, stage_run
from tlpipe.params_file import load_params
from tlpipe.paths import Outputs, data_root, outputs_for, resolve
from tlpipe.serving.inference import TextScorer
from tlpipe.training.checkpoint import CHECKPOINT_FORMAT
from tlpipe.training.decisions import (
    ThresholdChoice,
    TtaChoice,
    choose_thresholds,
    choose_tta,
    validation_probabilities,
)
from tlpipe.training.distributed import DistributedError, Rank, launch
from tlpipe.training.finetune import FinetuneData, finetune
from tlpipe.training.heads import HeadSpec, build_head, class_order
from tlpipe.training.model import Classifier, ModelSpec, save_classifier
from tlpipe.training.text_finetune import finetune_text
from tlpipe.vectors.backbones import Backbone
from tlpipe.vectors.preprocess import ImageFolderRows, iterate_batches
from tlpipe.vectors.text_features import chosen_model

STAGE = __name__.rpartition(".")[2]
EpochCallback = Callable[[int, dict], None]


def checkpoint_path(params: Params, project: Path, head_sha256: str, data_fingerprint: str,
                    weights_digest: str, augmented: bool) -> Path:
    """Checkpoints are keyed by every input of fine-tuning, the kind of device included (a
    GPU's random streams are not the CPU's): a key match means the same run."""
    key = sha256_text(head_sha256, data_fingerprint, weights_digest, params.seed,
                      params.section_digest("finetune", "augment"), augmented,
                      resolve_device(params.device).type, CHECKPOINT_FORMAT)
    return resolve(project, params.finetune.checkpoint_dir) / key[:16] / "last.pt"


@dataclasses.dataclass(frozen=True)
class Decisions:
    """How the final model turns probabilities into answers, both chosen on validation."""

    tta: TtaChoice
    thresholds: ThresholdChoice

    def to_dict(self) -> dict:
        return {"tta": self.tta.to_dict(), "thresholds": self.thresholds.to_dict()}


def _save(model: Classifier, spec: ModelSpec, decisions: Decisions, out: Outputs) -> None:
    save_classifier(model.eval(), dataclasses.replace(
        spec, tta=decisions.tta.tta, thresholds=decisions.thresholds.thresholds), out.model_dir)


def _head_only(reason: str, model: Classifier, spec: ModelSpec, decisions: Decisions,
               out: Outputs) -> dict:
    _save(model, spec, decisions, out)
    write_json(out.finetune_history, {"epochs": [], "best_epoch": -1, "skipped": True,
                                      "verdict": "skipped", "reason": reason,
                                      **decisions.to_dict()})
    return {"model_dir": str(out.model_dir), "epochs_run": 0, "resumed_from_epoch": None,
            "history": [], "verdict": "skipped", "reason": reason, "estimated_seconds": None,
            **decisions.to_dict()}


def compute(params: Params, project: Path, on_epoch_end: EpochCallback | None = None) -> dict:
    out = outputs_for(params, project)
    validated = load_manifest(out.validated)
    classes = class_order(validated["label"])
    validated = without_quarantined(validated, out.quarantine)
    chosen = json.loads(out.head_spec.read_text())
    head_spec = HeadSpec(**chosen["spec"])
    head = build_head(head_spec)
    head.load_state_dict(load_file(str(out.head_weights)))
    # What the features stage chose: the backbone and its evaluation preprocessing, or pixels.
    backbone = chosen_model(json.loads(out.preprocessing.read_text()), params.backbone,
                               project)
    if backbone.preprocessing is None:  # a text encoder
        return _text_model(params, project, backbone, head, head_spec, chosen, classes)
    spec = ModelSpec(backbone=backbone.name, num_features=backbone.num_features,
                     classes=classes, head=head_spec.to_dict(),
                     preprocessing=backbone.preprocessing.to_dict(),
                     max_pixels=params.validation.max_pixels)
    head_model = Classifier(backbone.model, head)

    def rows(split: str) -> tuple[list[str], list[int]]:
        part = validated[validated["split"] == split]
        return part["path"].tolist(), [classes.index(label) for label in part["label"]]

    train_paths, train_labels = rows("train")
    val_paths, val_labels = rows("val")
    data = FinetuneData(data_root(params, project), train_paths, train_labels, val_paths,
                        val_labels, len(classes))

    def decisions_for(model: Classifier) -> Decisions:
        settings, metric = params.evaluation, params.head.selection_metric
        unseen = chosen.get("fitted_on") != "train+val"
        validation = None
        if unseen and "auto" in (settings.tta, settings.thresholds):
            val_rows = ImageFolderRows.for_evaluation(data.root, val_paths,
                                                      backbone.preprocessing, val_labels)
            validation = validation_probabilities(
                model, iterate_batches(val_rows, settings.batch_size,
                                       params.finetune.num_workers),
                resolve_device(params.device))
        why = None if unseen else ("the head was fitted on the validation images too: none "
                                   "are left to judge it on")
        tta = choose_tta(settings.tta, validation, len(classes), metric, why)
        return Decisions(tta, choose_thresholds(
            settings.thresholds, validation and validation.under(tta.tta).numpy(),
            validation and validation.truth.numpy(), metric, params.seed, why))

    skip = ("finetune.epochs is 0" if params.finetune.epochs == 0 else
            f"the features are {backbone.name}: no backbone weights to fine-tune"
            if not backbone.blocks else
            None if head_spec.fine_tunable else
            f"the chosen head ({chosen['candidate']}) has no weights to fine-tune")
    if skip:
        return _head_only(skip, head_model, spec, decisions_for(head_model), out)

    rank = Rank.current()
    if params.finetune.processes > 1 and rank.world_size == 1:
        return _under_torchrun(params, project, on_epoch_end)
    # Fine-tuning augments its images only if the chosen head was fitted on augmented views.
    augmented = chosen["settings"].get("views") == "augmented"
    checkpoint = checkpoint_path(params, project, file_sha256(out.head_weights),
                                 manifest_fingerprint(validated), backbone.weights_digest,
                                 augmented)
    result = finetune(backbone, head, data, params.finetune,
                      params.augment if augmented else None, params.seed, checkpoint,
                      resolve_device(params.device), on_epoch_end, params.head.selection_metric)
    if rank.index > 0:
        return {}  # under torchrun the first process writes the outputs
    decisions = decisions_for(result.model)
    _save(result.model, spec, decisions, out)
    verdict = "kept" if result.improved else "not kept"
    reason = (f"{result.candidate.name}: "
              + _reason(result.history.start, result.history.epochs, result.history.best_epoch)
              + (f" ({result.budget_note})" if result.budget_note else ""))
    write_json(out.finetune_history, {"epochs": result.history.epochs,
                                      "best_epoch": result.history.best_epoch,
                                      "start": result.history.start,
                                      "candidate": dataclasses.asdict(result.candidate),
                                      "search": result.search, "budget": result.budget_note,
                                      "verdict": verdict, "reason": reason,
                                      **decisions.to_dict()})
    return {"model_dir": str(out.model_dir), "epochs_run": result.epochs_run,
            "resumed_from_epoch": result.resumed_from_epoch, "checkpoint": str(checkpoint),
            "history": result.history.epochs, "verdict": verdict, "reason": reason,
            "search": result.search, "estimated_seconds": result.estimated_seconds,
            **decisions.to_dict()}


def _text_model(params: Params, project: Path, encoder: Backbone, head: torch.nn.Module,
                head_spec: HeadSpec, chosen: dict, classes: list[str]) -> dict:
    """The text path: the encoder's top layers fine-tuned with the head
    (``training.text_finetune``) where that beats the head on the frozen encoder on
    validation, else the head alone; thresholds chosen on the final model's validation
    probabilities. Not resumable from a checkpoint yet: a killed text fine-tune starts over."""
    out = outputs_for(params, project)
    spec = ModelSpec(backbone=encoder.name, num_features=encoder.num_features, classes=classes,
                     head=head_spec.to_dict(), preprocessing={}, modality="text")
    rows = without_quarantined(load_manifest(out.validated), out.quarantine)
    train, val = ((part["text"].tolist(), [classes.index(label) for label in part["label"]])
                  for part in (rows[rows["split"] == split] for split in ("train", "val")))
    unseen = chosen.get("fitted_on") != "train+val"
    skip = ("finetune.epochs is 0" if params.finetune.epochs == 0 else
            f"the chosen head ({chosen['candidate']}) has no weights to fine-tune"
            if not head_spec.fine_tunable else
            "the head was fitted on the validation texts too: none are left to judge "
            "fine-tuning on" if not unseen else None)
    model = Classifier(encoder.model, head)
    result = None
    if skip is None:
        result = finetune_text(encoder.model, head, train, val, len(classes), params.finetune,
                               params.seed, resolve_device(params.device),
                               params.head.selection_metric)
        model = Classifier(result.encoder, result.head)
    probabilities = None
    if unseen and params.evaluation.thresholds == "auto":
        probabilities = TextScorer(model, resolve_device(params.device),
                                   params.text.batch_size)(val[0])
    decisions = Decisions(
        TtaChoice("none", "texts have no mirror image: no test-time flips"),
        choose_thresholds(params.evaluation.thresholds, probabilities,
                          np.array(val[1]) if probabilities is not None else None,
                          params.head.selection_metric, params.seed,
                          None if unseen else "the head was fitted on the validation texts too"))
    if result is None:
        return _head_only(skip, model, spec, decisions, out)
    _save(model, spec, decisions, out)
    history = result.history
    verdict = "kept" if result.improved else "not kept"
    reason = (f"top {result.layers} of {len(encoder.blocks)} layers: "
              + _reason(history.start, history.epochs, history.best_epoch))
    write_json(out.finetune_history, {"epochs": history.epochs, "best_epoch": history.best_epoch,
                                      "start": history.start, "verdict": verdict,
                                      "reason": reason, **decisions.to_dict()})
    return {"model_dir": str(out.model_dir), "epochs_run": len(history.epochs),
            "resumed_from_epoch": None, "history": history.epochs, "verdict": verdict,
            "reason": reason, "estimated_seconds": None, **decisions.to_dict()}


def _reason(start: dict, epochs: list[dict], best_epoch: int) -> str:
    def figures(record: dict) -> str:
        return (f"val loss {record['val_loss']:.4f}, accuracy {record['val_accuracy']:.4f}, "
                f"macro-F1 {record['val_macro_f1']:.4f}")

    if best_epoch < 0:
        return (f"no epoch beat the head on validation (head: {figures(start)}); the head on "
                "the frozen backbone is the model")
    best = next(record for record in epochs if record["epoch"] == best_epoch)
    return (f"epoch {best_epoch + 1} beat the head on validation: {figures(best)} (head: "
            f"{figures(start)})")


def _under_torchrun(params: Params, project: Path, on_epoch_end: EpochCallback | None) -> dict:
    """``compute`` in ``finetune.processes`` processes; the per-epoch records are replayed
    through ``on_epoch_end`` afterwards (they happened in other processes)."""
    payload = {"params": params.model_dump(mode="json"), "project": str(project.resolve())}
    try:
        outcome = launch(f"{__name__}:{in_each_process.__name__}", payload,
                         params.finetune.processes, params.finetune.backend,
                         resolve_device(params.device))
    except DistributedError as error:
        raise DistributedError(f"finetune.processes={params.finetune.processes}, "
                               f"finetune.backend={params.finetune.backend}: {error}") from None
    if on_epoch_end is not None:
        for record in outcome["history"]:
            on_epoch_end(record["epoch"], record)
    return outcome


def in_each_process(payload: dict) -> dict:
    """What each torchrun process runs: its share of the same fine-tuning. The payload names
    the project and either the settings or the project's params file (``params_file``, for a
    launch by hand across hosts: docs/scale.md)."""
    project = Path(payload["project"])
    params = (Params.model_validate(payload["params"]) if "params" in payload
              else load_params(project / payload.get("params_file", "params.yaml")))
    return compute(params, project)


def run(context: RunContext, params: Params, project: Path) -> dict:
    with stage_run(context, STAGE):
        mlflow.log_params(flat_params("finetune", params.finetune))
        result = compute(params, project,
                         on_epoch_end=lambda epoch, record: log_history([record], "finetune"))
        if result["resumed_from_epoch"] is not None:
            mlflow.set_tag("resumed_from_epoch", result["resumed_from_epoch"])
            done = result["resumed_from_epoch"] + 1
            print(f"finetune: reused the finished run in {result['checkpoint']}"
                  if result["epochs_run"] == 0 else
                  f"finetune: resumed after epoch {done} from {result['checkpoint']}")
        mlflow.log_metric("epochs_run", result["epochs_run"])
        if result["estimated_seconds"] is not None:
            mlflow.log_metric("estimated_seconds", result["estimated_seconds"])
        if len(result.get("search", [])) > 1:  # `tlpipe run` prints it, under the heads
            mlflow.log_table(pd.DataFrame(result["search"]), "search.json")
        summary = f"{result['verdict']}: {result['reason']}"
        mlflow.set_tag("finetune.verdict", result["verdict"])
        MlflowClient().set_tag(context.parent_run_id, tags.FINETUNE, summary[:4000])
        print(f"finetune: {summary}")
        tta = result["tta"]
        mlflow.set_tag("tta", tta["tta"])
        print(f"finetune: test-time flips {'on' if tta['tta'] == 'flip' else 'off'}: "
              f"{tta['reason']}")
        if params.evaluation.thresholds != "none":
            thresholds = result["thresholds"]
            mlflow.set_tag("thresholds", json.dumps(thresholds["thresholds"]))
            print(f"finetune: per-class thresholds {'on' if thresholds['thresholds'] else 'off'}"
                  f": {thresholds['reason']}")
        return {k: v for k, v in result.items() if k != "history"}
