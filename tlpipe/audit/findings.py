"""The audit: what the images' own embeddings say about the data, before any training.

On the plain-view vectors of every image (the feature store already holds them):
- label issues: out-of-fold probabilities of a logistic probe, then cleanlab's label-issue
  finder; each with its given label, the label the probe suggests and cleanlab's label quality
  (low: suspect);
- near-copies: pairs far closer than distinct images of this data are, at most
  ``audit.near_copy_distance`` times the median image's cosine distance to its nearest
  neighbour. Across splits it is a leak (the held-out score is inflated), across classes a
  conflict, within a class a harmless duplicate that is only counted;
- outliers: images far from every class, by the distance to the nearest class centre in robust
  standard deviations. A centre, not nearest neighbours: a handful of stray images of one kind
  are each other's neighbours, but none of them is near a class.
Each kind of finding has its verdict in ``audit`` (fail, quarantine, report). A quarantined
image is left out of training; a test image is never taken out of the test split, whatever the
verdict, so every model is compared on the same held-out images.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from cleanlab.filter import find_label_issues
from cleanlab.rank import get_label_quality_scores
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from threadpoolctl import threadpool_limits

from tlpipe.audit.neighbours import nearest, unit_rows
from tlpipe.config import AuditConfig
from tlpipe.errors import TlpipeError

# Which side of a leak is left out: the one less held out.
HELD_OUT_RANK = {"train": 0, "val": 1, "test": 2}
# Each kind of finding and the setting that holds its verdict.
VERDICT_SETTING = {"label_issue": "label_issues", "leak": "leaks", "conflict": "conflicts",
                   "outlier": "outliers"}
FINDING_COLUMNS = ["path", "label", "split", "finding", "score", "suggested", "neighbour",
                   "neighbour_label", "neighbour_split", "similarity", "verdict", "quarantined"]
MAD_TO_SD = 1.4826  # a normal distribution's standard deviation is 1.4826 MADs


@dataclass
class AuditResult:
    """The audited images (path, label, split, sha256, key) and what was found among them."""

    images: pd.DataFrame
    findings: pd.DataFrame                 # one row per flagged image and finding
    duplicates_within_class: int           # near-copy pairs in one split and class: harmless
    near_copy_similarity: float            # the cosine similarity a near-copy pair reaches
    outlier_distance: np.ndarray           # per image: cosine distance to its nearest class
    verdicts: dict[str, str]               # per kind of finding, from the settings
    notes: list[str] = field(default_factory=list)

    @property
    def quarantined(self) -> pd.DataFrame:
        return self.findings[self.findings["quarantined"]].drop_duplicates("path")

    @property
    def failures(self) -> pd.DataFrame:
        return self.findings[self.findings["verdict"] == "fail"]

    def summary(self) -> dict:
        counts = self.findings["finding"].value_counts()
        return {"images": len(self.images),
                **{f"{kind}s": int(counts.get(kind, 0)) for kind in VERDICT_SETTING},
                "duplicates_within_class": self.duplicates_within_class,
                "near_copy_similarity": round(self.near_copy_similarity, 4),
                "quarantined": len(self.quarantined), "verdicts": self.verdicts,
                "failed": sorted(self.failures["finding"].unique().tolist()),
                "notes": self.notes}


def describe(summary: dict) -> str:
    """A summary's counts in one line, as the console, the CLI and Prefect show them."""
    failed = f"; FAILED on {', '.join(summary['failed'])}" if summary["failed"] else ""
    return (f"{summary['label_issues']} label issue(s), {summary['leaks']} leak(s) across "
            f"splits, {summary['conflicts']} conflict(s), {summary['outliers']} outlier(s); "
            f"{summary['quarantined']} quarantined{failed}")


class AuditFailed(TlpipeError):
    """A finding whose verdict is ``fail``: the pipeline stops before any training."""

    def __init__(self, result: AuditResult, report: str):
        kinds = result.failures.groupby("finding")["path"].unique()
        lines = [f"audit: {len(paths)} {kind.replace('_', ' ')}(s), and audit."
                 f"{VERDICT_SETTING[kind]} is fail: {', '.join(paths[:5])}"
                 + (" ..." if len(paths) > 5 else "") for kind, paths in kinds.items()]
        super().__init__("\n".join([*lines, f"See {report}. Fix the data (remove one of each "
                                    "pair of near-copies, relabel, or delete the image), or set "
                                    "the verdict to quarantine or report."]))


def out_of_fold_probabilities(unit: np.ndarray, labels: np.ndarray, num_classes: int,
                              folds: int, seed: int) -> np.ndarray | None:
    """Each image's class probabilities from a logistic probe that never saw it; None when a
    class has fewer than two images (nothing to hold out)."""
    counts = np.bincount(labels, minlength=num_classes)
    folds = min(folds, int(counts[counts > 0].min()))
    if folds < 2:
        return None
    probabilities = np.zeros((len(labels), num_classes))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with threadpool_limits(limits=1, user_api="blas"):  # small fits: threads cost more
        for fit, held_out in splitter.split(unit, labels):
            probe = LogisticRegression(C=1.0, max_iter=2000, class_weight="balanced").fit(
                unit[fit], labels[fit])
            probabilities[np.ix_(held_out, probe.classes_)] = probe.predict_proba(unit[held_out])
    return probabilities


def label_issues(unit: np.ndarray, labels: np.ndarray, classes: list[str],
                 config: AuditConfig, seed: int) -> pd.DataFrame | None:
    """cleanlab's label issues, most suspect first: row, suggested label, label quality."""
    probabilities = out_of_fold_probabilities(unit, labels, len(classes), config.cv_folds, seed)
    if probabilities is None:
        return None
    ranked = find_label_issues(labels, probabilities, filter_by=config.label_issue_filter,
                               return_indices_ranked_by="self_confidence")
    quality = get_label_quality_scores(labels, probabilities)
    return pd.DataFrame({"row": ranked, "suggested": np.asarray(classes)[
        probabilities[ranked].argmax(axis=1)], "score": quality[ranked]})


def near_copy_pairs(similarities: np.ndarray, neighbours: np.ndarray, threshold: float
                    ) -> pd.DataFrame:
    """Each pair of rows at or above ``threshold`` once: a, b (a < b), similarity."""
    rows, columns = np.nonzero((similarities >= threshold) & (neighbours >= 0))
    a, b = rows, neighbours[rows, columns]
    pairs = pd.DataFrame({"a": np.minimum(a, b), "b": np.maximum(a, b),
                          "similarity": similarities[rows, columns]})
    return pairs.drop_duplicates(["a", "b"]).reset_index(drop=True)


def distance_to_classes(unit: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Cosine distance from each image to the nearest class centre."""
    centres = unit_rows(np.stack([unit[labels == c].mean(axis=0) if (labels == c).any()
                                  else np.zeros(unit.shape[1]) for c in range(num_classes)]))
    return 1.0 - (unit @ centres.T).max(axis=1)


def robust_deviations(values: np.ndarray) -> np.ndarray:
    """How far each value lies above the median, in robust standard deviations."""
    median = np.median(values)
    spread = MAD_TO_SD * np.median(np.abs(values - median))
    return (values - median) / spread if spread > 0 else np.zeros_like(values)


def audit_embeddings(images: pd.DataFrame, vectors: np.ndarray, config: AuditConfig,
                     seed: int) -> AuditResult:
    """Every finding about ``images`` (one plain-view vector per row), with its verdict."""
    images = images.reset_index(drop=True)
    classes = sorted(images["label"].unique())
    labels = images["label"].map({label: i for i, label in enumerate(classes)}).to_numpy()
    unit = unit_rows(vectors)
    similarities, neighbours = nearest(unit, config.neighbours, config.exact_search_max, seed)
    found, notes = [], []

    def finding(row: int, kind: str, other: int, score: float, suggested: str = "",
                similarity: float | None = None) -> None:
        found.append({"row": row, "finding": kind, "score": float(score), "suggested": suggested,
                      "other": other, "similarity": similarity})

    issues = label_issues(unit, labels, classes, config, seed)
    if issues is None:
        notes.append("label issues not searched: a class has fewer than 2 images")
    else:
        for row, suggested, score in issues.itertuples(index=False):
            finding(row, "label_issue", _first(neighbours, row), score, suggested)

    typical = float(np.median(1.0 - similarities[:, 0])) if similarities.shape[1] else 0.0
    threshold = 1.0 - config.near_copy_distance * typical
    pairs = near_copy_pairs(similarities, neighbours, threshold
                            ).sort_values("similarity", ascending=False)
    splits, names = images["split"].to_numpy(), images["label"].to_numpy()
    within_class = 0
    for a, b, similarity in pairs.itertuples(index=False):
        if splits[a] != splits[b]:  # the training side of a leak is the one left out
            low, high = sorted((a, b), key=lambda row: HELD_OUT_RANK.get(splits[row], 0))
            finding(low, "leak", high, similarity, similarity=similarity)
        if names[a] != names[b]:  # across splits too: a leak and a contradiction at once
            finding(a, "conflict", b, similarity, similarity=similarity)
            finding(b, "conflict", a, similarity, similarity=similarity)
        elif splits[a] == splits[b]:
            within_class += 1

    distance = distance_to_classes(unit, labels, len(classes))
    deviations = robust_deviations(distance)
    for row in sorted(np.flatnonzero(deviations >= config.outlier_deviations),
                      key=lambda row: -deviations[row]):  # the furthest first
        finding(row, "outlier", _first(neighbours, row), deviations[row])

    verdicts = {kind: getattr(config, setting) for kind, setting in VERDICT_SETTING.items()}
    return AuditResult(images, _findings_frame(found, images, verdicts), within_class,
                       threshold, distance, verdicts, notes)


def _first(neighbours: np.ndarray, row: int) -> int:
    return int(neighbours[row, 0]) if neighbours.shape[1] else -1


def _findings_frame(found: list[dict], images: pd.DataFrame, verdicts: dict[str, str]
                    ) -> pd.DataFrame:
    if not found:
        return pd.DataFrame(columns=FINDING_COLUMNS).astype({"quarantined": bool})
    rows = pd.DataFrame(found)
    this = images.iloc[rows["row"]].reset_index(drop=True)
    known = rows["other"].to_numpy() >= 0
    other = images.iloc[np.where(known, rows["other"], 0)].reset_index(drop=True)
    frame = pd.DataFrame({
        "path": this["path"], "label": this["label"], "split": this["split"],
        "finding": rows["finding"], "score": rows["score"], "suggested": rows["suggested"],
        "neighbour": other["path"].where(known, ""),
        "neighbour_label": other["label"].where(known, ""),
        "neighbour_split": other["split"].where(known, ""), "similarity": rows["similarity"],
    })
    frame["verdict"] = frame["finding"].map(verdicts)
    frame["quarantined"] = (frame["verdict"] == "quarantine") & (frame["split"] != "test")
    return frame[FINDING_COLUMNS]
