"""augment: a preview grid of the training augmentation policy on a fixed sample of images."""

from __future__ import annotations

from pathlib import Path

import mlflow

from tlpipe.config import Params
from tlpipe.data.layout import modality
from tlpipe.data.manifest import load_manifest
from tlpipe.ops.tracking import RunContext, flat_params, log_to_run_and_parent, stage_run
from tlpipe.paths import data_root, outputs_for
from tlpipe.reports.augment_preview import (
    save_augmentation_preview,
    save_text_augmentation_preview,
)
from tlpipe.vectors.backbones import backbone_for

STAGE = __name__.rpartition(".")[2]
PREVIEW_VIEWS = 4  # augmented views beside each plain image in the preview grid
TEXT_PREVIEW_VIEWS = 2  # texts take a line each


def compute(params: Params, project: Path) -> dict:
    out = outputs_for(params, project)
    rows = max(1, params.augment.preview_images // PREVIEW_VIEWS)
    validated = load_manifest(out.validated)
    train = validated.query("split == 'train'")
    # Ordering by content hash gives a fixed, unbiased sample; round-robin over classes.
    ranked = train.sort_values("sha256")
    ranked = ranked.assign(rank=ranked.groupby("label").cumcount()).sort_values(["rank", "label"])
    if modality(validated) == "text":
        shown = ranked.head(rows)
        save_text_augmentation_preview(
            list(zip(shown["path"], shown["sha256"], shown["text"], strict=True)),
            params.text.token_dropout, params.seed, out.preview, TEXT_PREVIEW_VIEWS)
        return {"preview": str(out.preview)}
    save_augmentation_preview(data_root(params, project), ranked["path"].tolist()[:rows],
                              backbone_for(params.backbone, project).preprocessing,
                              params.augment, params.seed, out.preview, PREVIEW_VIEWS)
    return {"preview": str(out.preview)}


def run(context: RunContext, params: Params, project: Path) -> dict:
    with stage_run(context, STAGE):
        result = compute(params, project)
        mlflow.log_params(flat_params("augment", params.augment))
        log_to_run_and_parent(context, result["preview"], "augment")
        return result
