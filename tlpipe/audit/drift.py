"""Drift: do the new images look like the images the champion was trained on?

A kernel two-sample test on plain-view embeddings: the maximum mean discrepancy (MMD; Gretton
et al., "A Kernel Two-Sample Test", JMLR 2012) with a Gaussian kernel as wide as the median
distance between the pooled vectors, and its p-value from a permutation test (the share of
random relabellings of the pooled vectors whose MMD is at least the observed one). The new
images most unlike the reference are those where the witness function (mean kernel to the new
images minus mean kernel to the reference) is highest.

The champion's ``audit/images.parquet`` (the audit stage logs it with the preprocessing its
vectors were made with) lists every image it saw; the ones it trained on are the reference, and
images not listed at all are new. Reference vectors come from the feature store; new images get
theirs the way the features stage makes them: only images the store lacks cost
a forward pass, and training then finds them stored.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from tlpipe.audit.neighbours import unit_rows
from tlpipe.config import Params
from tlpipe.data.layout import modality
from tlpipe.data.scan import scan
from tlpipe.devices import resolve_device
from tlpipe.errors import TlpipeError
from tlpipe.paths import data_root, feature_store, resolve
from tlpipe.vectors.features import extract_features, plan_views, spec_on
from tlpipe.vectors.text_features import chosen_model, text_vectors

MOST_UNLIKE = 10
PERMUTATIONS_PER_BLOCK = 250  # bounds the memory of the permuted-sign matrix


class DriftNotMeasured(TlpipeError):
    pass


@dataclass
class Drift:
    """The test's outcome; ``drifted`` is None when it could not be run, and ``reason`` says
    why (or what it found)."""

    drifted: bool | None
    reason: str
    statistic: float | None = None       # MMD^2, biased (V-statistic)
    p_value: float | None = None
    new_images: int = 0
    reference_images: int = 0
    permutations: int = 0
    most_unlike: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def mmd_test(reference: np.ndarray, new: np.ndarray, permutations: int, seed: int
             ) -> tuple[float, float, np.ndarray]:
    """(MMD^2, permutation p-value, witness value of each new vector)."""
    pooled = unit_rows(np.vstack([reference, new])).astype(np.float64)
    n, total = len(reference), len(pooled)
    squared = np.maximum(2.0 - 2.0 * pooled @ pooled.T, 0.0)  # unit vectors
    width = np.median(squared[np.triu_indices(total, k=1)])
    kernel = np.exp(-squared / (width if width > 0 else 1.0))
    signs = np.concatenate([np.full(n, 1.0 / n), np.full(total - n, -1.0 / (total - n))])
    observed = float(signs @ kernel @ signs)
    rng = np.random.default_rng(seed)
    at_least = 0
    for start in range(0, permutations, PERMUTATIONS_PER_BLOCK):
        block = min(PERMUTATIONS_PER_BLOCK, permutations - start)
        shuffled = np.stack([signs[rng.permutation(total)] for _ in range(block)], axis=1)
        statistics = np.einsum("ij,ij->j", shuffled, kernel @ shuffled)
        at_least += int((statistics >= observed - 1e-12).sum())
    witness = kernel[n:, n:].mean(axis=1) - kernel[n:, :n].mean(axis=1)
    return observed, (1 + at_least) / (1 + permutations), witness


def _sample(frame: pd.DataFrame, limit: int, seed: int) -> pd.DataFrame:
    return frame if len(frame) <= limit else frame.sample(limit, random_state=seed)


def champion_images(run_id: str) -> tuple[pd.DataFrame, dict]:
    """The images the champion's run audited (``trained``: used for training), and what made
    their vectors (the features stage's ``preprocessing.json``)."""
    with tempfile.TemporaryDirectory() as folder:
        try:
            local = Path(mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path="audit", dst_path=folder))
            images = pd.read_parquet(local / "images.parquet")
            choice = json.loads((local / "preprocessing.json").read_text())
        except Exception as error:
            raise DriftNotMeasured(
                f"the champion's run {run_id} has no audit/images.parquet "
                f"(trained before the audit existed?): {type(error).__name__}") from None
    return images, choice


def measure_drift(params: Params, project: Path, champion_run_id: str,
                  champion_weights: str | None) -> Drift:
    """The data's images (or texts) new to the champion, tested against its training ones."""
    seen, choice = champion_images(champion_run_id)
    reference = seen[seen["trained"]]
    root = data_root(params, project)
    manifest = scan(root, params.data, params.split, params.validation.max_pixels, params.text,
                    state_dir=resolve(project, params.data.state_dir))
    texts = modality(manifest) == "text"
    usable = manifest[manifest["decodable"].astype(bool) & (
        texts or manifest["format"].isin(params.validation.allowed_formats))]
    new = usable[~usable["sha256"].isin(seen["sha256"])].drop_duplicates("sha256")
    unit = "text" if texts else "image"
    if new.empty:
        return Drift(False, f"no new {unit}s: nothing to test for drift",
                     reference_images=len(reference))
    backbone = chosen_model(choice, params.backbone, project)
    if champion_weights and backbone.weights_digest != champion_weights:
        raise DriftNotMeasured(f"backbone {backbone.name} is not the champion's (other "
                               "weights): its embeddings cannot be compared")
    limit, seed = params.retrain.drift_max_images, params.seed
    new, reference = _sample(new, limit, seed), _sample(reference, limit, seed)
    device = resolve_device(params.device)
    store = feature_store(params, project)
    if texts:
        new_vectors = text_vectors(backbone.model, new["text"].tolist(), store,
                                   params.text.batch_size, device).vectors
    else:
        plan = plan_views(new.assign(split="new"), 0, spec_on(params, backbone, device))
        extract_features(plan, root, backbone, params.features, params.augment, seed, store,
                         device)
        new_vectors = store.read(plan["key"].tolist())
    try:
        reference_vectors = store.read(reference["key"].tolist())
    except KeyError:
        raise DriftNotMeasured(f"the champion's vectors are not in the feature store "
                               f"({params.features.store})") from None
    statistic, p_value, witness = mmd_test(reference_vectors, new_vectors,
                                           params.retrain.drift_permutations, seed)
    drifted = p_value < params.retrain.drift_significance
    unlike = new["path"].to_numpy()[np.argsort(-witness)[:MOST_UNLIKE]].tolist()
    verdict = "drifted" if drifted else "did not drift"
    return Drift(drifted, f"{len(new)} new {unit}(s) {verdict} from the champion's "
                          f"{len(reference)} training {unit}s: MMD^2 {statistic:.4f}, p = "
                          f"{p_value:.4f} (retrain.drift_significance "
                          f"{params.retrain.drift_significance})",
                 statistic, p_value, len(new), len(reference),
                 params.retrain.drift_permutations, unlike)
