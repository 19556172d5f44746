"""What the audit costs, and what it finds, on the demo and on 10k and 100k vectors.

1. The demo: plain-view features of every image (the baseline: what the features stage pays
   per image), then the audit stage on them, report included.
2. Label issues on the demo's real features: 5% of the training labels flipped, 30 random
   draws, recall and precision of each cleanlab filter.
3. 10k and 100k vectors made from the demo's real ones (random mixtures of two images of one
   class plus noise, 1% planted near-copies): the audit's parts timed, and the approximate
   FAISS index against exact search (speed, and how many planted copies and true nearest
   neighbours it finds).
4. The drift test at its default sample sizes.

    .venv/bin/python bench/audit.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from cleanlab.filter import find_label_issues
from common import DEMO

from tests.conftest import make_project
from tlpipe.audit.drift import mmd_test
from tlpipe.audit.findings import (
    audit_embeddings,
    distance_to_classes,
    label_issues,
    out_of_fold_probabilities,
)
from tlpipe.audit.neighbours import nearest, unit_rows
from tlpipe.config import AuditConfig
from tlpipe.params_file import load_params
from tlpipe.paths import feature_store, outputs_for
from tlpipe.stages import audit, features, manifest, validate


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def demo(workdir: Path) -> tuple[pd.DataFrame, np.ndarray]:
    project = make_project(workdir / "demo", DEMO, {"validation": {"quarantine": ["format"]},
                                                     "features": {"views": 0}})
    params = load_params(project / "params.yaml")
    for stage in (manifest, validate):
        stage.compute(params, project)
    extracted, _ = timed(features.compute, params, project)
    summary, seconds = timed(audit.compute, params, project)
    plan = pd.read_parquet(outputs_for(params, project).plan)
    vectors = feature_store(params, project).read(plan["key"].tolist())
    _, core = timed(audit_embeddings, plan, vectors, params.audit, params.seed)
    per_image = extracted["seconds"] / extracted["computed"]
    print(f"\n## demo: {len(plan)} images")
    print(f"features (plain views, baseline): {extracted['seconds']:.2f} s, "
          f"{1000 * per_image:.1f} ms/img")
    print(f"audit stage (findings, map, HTML report): {seconds:.2f} s = "
          f"{seconds / extracted['seconds']:.2f}x the extraction; the findings alone "
          f"{core:.3f} s")
    print({key: summary[key] for key in ("label_issues", "leaks", "conflicts", "outliers",
                                         "duplicates_within_class", "near_copy_similarity")})
    return plan, vectors


def flipped_labels(plan: pd.DataFrame, vectors: np.ndarray, draws: int = 30) -> None:
    classes = sorted(plan["label"].unique())
    labels = plan["label"].map(classes.index).to_numpy()
    unit = unit_rows(vectors)
    train = np.flatnonzero(plan["split"].to_numpy() == "train")
    print(f"\n## label issues: 5% of {len(train)} training labels flipped, {draws} draws")
    for filter_by in ("predicted_neq_given", "prune_by_noise_rate"):
        recalls, precisions, counts = [], [], []
        for draw in range(draws):
            flipped = np.random.default_rng(draw).choice(train, round(0.05 * len(train)),
                                                         replace=False)
            noisy = labels.copy()
            noisy[flipped] = 1 - noisy[flipped]
            probabilities = out_of_fold_probabilities(unit, noisy, len(classes), 5, 42)
            found = find_label_issues(noisy, probabilities, filter_by=filter_by)
            hits = np.isin(np.flatnonzero(found), flipped).sum()
            recalls.append(hits / len(flipped))
            precisions.append(hits / max(found.sum(), 1))
            counts.append(found.sum())
        print(f"{filter_by:22s} recall mean {np.mean(recalls):.2f} (10th percentile "
              f"{np.percentile(recalls, 10):.2f}, min {min(recalls):.2f}), precision mean "
              f"{np.mean(precisions):.2f}, flagged {np.mean(counts):.1f} of {len(plan)}")


def scaled(plan: pd.DataFrame, vectors: np.ndarray, size: int, seed: int = 0
           ) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """``size`` vectors: mixtures of two real images of one class plus noise, with 1% of them
    near-copies of another (their indices returned)."""
    rng = np.random.default_rng(seed)
    labels = plan["label"].to_numpy()
    rows = rng.integers(0, len(plan), size)
    partners = np.array([rng.choice(np.flatnonzero(labels == labels[row])) for row in rows])
    weight = rng.uniform(0, 1, (size, 1)).astype(np.float32)
    scale = float(np.abs(vectors).mean())
    made = (weight * vectors[rows] + (1 - weight) * vectors[partners]
            + rng.normal(0, 0.5 * scale, (size, vectors.shape[1])).astype(np.float32))
    copies = rng.choice(size, size // 100, replace=False)
    originals = rng.choice(np.setdiff1d(np.arange(size), copies), len(copies), replace=False)
    made[copies] = made[originals] + rng.normal(0, 0.02 * scale, (len(copies), made.shape[1]))
    frame = pd.DataFrame({"path": [f"{labels[row]}/{i}.jpg" for i, row in enumerate(rows)],
                          "label": labels[rows],
                          "split": rng.choice(["train", "val", "test"], size, p=[.7, .1, .2])})
    return frame, made.astype(np.float32), np.stack([copies, originals], axis=1)


def at_scale(plan: pd.DataFrame, vectors: np.ndarray, size: int) -> None:
    frame, made, planted = scaled(plan, vectors, size)
    config = AuditConfig()
    print(f"\n## {size} vectors (1280 floats), {len(planted)} planted near-copies")
    classes = sorted(frame["label"].unique())
    labels = frame["label"].map(classes.index).to_numpy()
    unit = unit_rows(made)
    (_, neighbours), approximate = timed(nearest, made, config.neighbours,
                                         exact_max=config.exact_search_max)
    kind = "IVF index" if size > config.exact_search_max else "exact"
    print(f"nearest {config.neighbours} neighbours ({kind}): {approximate:.2f} s")
    if size > config.exact_search_max:  # exact search on a sample of queries, scaled up
        import faiss

        queries = np.random.default_rng(1).choice(size, 5000, replace=False)
        index = faiss.IndexFlatIP(unit.shape[1])
        index.add(unit)
        (_, exact_neighbours), exact = timed(index.search, unit[queries], 2)
        exact *= size / len(queries)
        same = (neighbours[queries, 0] == exact_neighbours[:, 1]).mean()
        print(f"exact search, extrapolated from 5000 queries: {exact:.1f} s; the index is "
              f"{exact / approximate:.1f}x faster and finds the true nearest neighbour of "
              f"{100 * same:.1f}% of the queries")
    found = {tuple(sorted(pair)) for pair in planted.tolist()}
    pairs = {(a, b) for a, row in enumerate(neighbours.tolist()) for b in row}
    hit = sum((a, b) in pairs or (b, a) in pairs for a, b in found)
    print(f"planted near-copies among the neighbours found: {hit} of {len(found)}")
    _, seconds = timed(label_issues, unit, labels, classes, config, 42)
    print(f"label issues (5-fold logistic probe + cleanlab): {seconds:.2f} s")
    _, seconds = timed(distance_to_classes, unit, labels, len(classes))
    print(f"outliers (distance to class centres): {seconds:.3f} s")
    result, seconds = timed(audit_embeddings, frame, made, config, 42)
    summary = result.summary()
    print(f"whole audit (findings): {seconds:.2f} s: "
          + str({key: summary[key] for key in ("label_issues", "leaks", "conflicts",
                                               "outliers", "duplicates_within_class")}))


def drift(vectors: np.ndarray) -> None:
    print("\n## drift: MMD with 1000 permutations")
    rng = np.random.default_rng(3)
    for reference, new in ((300, 30), (1000, 100), (2000, 2000)):
        picks = vectors[rng.integers(0, len(vectors), reference + new)]
        noisy = picks + rng.normal(0, 0.1, picks.shape).astype(np.float32)
        (_, p_value, _), seconds = timed(mmd_test, noisy[:reference], noisy[reference:], 1000,
                                         0)
        print(f"{reference} reference vs {new} new images: {seconds:.2f} s (p = "
              f"{p_value:.3f}, same distribution)")


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        plan, vectors = demo(Path(folder))
    flipped_labels(plan, vectors)
    for size in (10_000, 100_000):
        at_scale(plan, vectors, size)
    drift(vectors)


if __name__ == "__main__":
    main()
