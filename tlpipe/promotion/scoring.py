"""The challenger and the champion, and their scores on the held-out images of the data as it
is now: every model a decision compares is scored on the same images, by the same code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tlpipe.config import Params, RegistryConfig
from tlpipe.data.layout import modality
from tlpipe.data.manifest import manifest_fingerprint
from tlpipe.data.scan import check_folder
from tlpipe.data.validation import ValidationFailed
from tlpipe.errors import TlpipeError
from tlpipe.paths import data_root
from tlpipe.promotion.candidates import Candidates, HeldOutSplit, ScoredCandidates
from tlpipe.promotion.gate import Scores
from tlpipe.registry.loader import load_version
from tlpipe.registry.versions import alias_version


class PromotionError(TlpipeError):
    """A promotion that cannot go ahead; the message says why and what to do."""


def current_test_split(params: Params, project_dir: Path) -> HeldOutSplit:
    """Scan and validate the data as it is now (in memory; no pipeline output is touched)."""
    root = data_root(params, project_dir)
    report, kept = check_folder(root, params)
    if not report.passed:
        raise ValidationFailed(report)
    test = kept[kept["split"] == "test"]
    if test.empty:
        raise PromotionError(f"{root}: the current data has no test images to compare on")
    return HeldOutSplit(root, test["path"].tolist(), test["label"].tolist(),
                        manifest_fingerprint(test),
                        test["text"].tolist() if modality(kept) == "text" else None)


def find_candidates(registry: RegistryConfig, version: str | None = None) -> Candidates:
    """The challenger (``version``, or the version holding ``registry.alias``) and the
    current champion."""
    client, name = MlflowClient(), registry.model_name
    challenger = str(version) if version is not None else alias_version(client, name,
                                                                         registry.alias)
    if challenger is None:
        raise PromotionError(f"{name!r} has no @{registry.alias} version: train one with "
                             "`tlpipe run`, or name the version: `tlpipe promote VERSION`")
    try:
        client.get_model_version(name, challenger)
    except MlflowException:
        raise PromotionError(f"{name!r} has no version {challenger}; `tlpipe models` lists "
                             "them") from None
    return Candidates(name, challenger, alias_version(client, name, registry.champion_alias))


def score_version(name: str, version: str, split: HeldOutSplit, params: Params
                  ) -> tuple[Scores | None, list[str]]:
    """Scores on ``split``, or None when the version knows other classes than the data."""
    from tlpipe.devices import resolve_device
    from tlpipe.serving.inference import probabilities_of  # torch: on use only

    model, spec = load_version(name, version)
    if set(split.labels) - set(spec.classes):
        return None, spec.classes
    if (split.texts is not None) != (spec.modality == "text"):
        return None, spec.classes  # an image model and texts (or the reverse): not comparable
    probabilities = probabilities_of(model, spec, split.root, split.paths, split.texts, params,
                                     resolve_device(params.device))
    y_true = np.array([spec.classes.index(label) for label in split.labels])
    return Scores.from_probabilities(version, y_true, probabilities, spec.classes,
                                     params.evaluation.calibration_bins,
                                     spec.thresholds), spec.classes


def score_candidates(candidates: Candidates, split: HeldOutSplit, params: Params
                     ) -> ScoredCandidates:
    name = candidates.model_name
    challenger, classes = score_version(name, candidates.challenger, split, params)
    if challenger is None:
        raise PromotionError(
            f"version {candidates.challenger} knows classes {classes}, but the current test "
            f"split has {sorted(set(split.labels))}: retrain it on the current data")
    if candidates.champion is None:
        return ScoredCandidates(challenger, None)
    champion, champion_classes = score_version(name, candidates.champion, split, params)
    if champion is None or champion_classes != classes:
        return ScoredCandidates(challenger, None, (
            f"champion v{candidates.champion} was trained on classes {champion_classes}, the "
            f"challenger on {classes}: a model's classes are part of it, so neither the gate "
            "nor --force puts one in the other's place; register data with other classes "
            "under another registry.model_name"))
    return ScoredCandidates(challenger, champion)
