"""Nearest neighbours by cosine similarity, exact or through an approximate FAISS index.

Exact search compares every pair (a matrix product per block, FAISS's flat index): right up to
tens of thousands of vectors. Beyond ``exact_max`` an inverted-file index (IVF) clusters the
vectors into 2 sqrt(n) lists and compares each one with the members of its ``PROBES`` nearest
lists only, about 1.3% of the data at 100k; bench/audit.py measures both and what the index
misses. Fewer, larger lists scan the same share as more, smaller ones, and their k-means costs
far less: at 100k, 632 lists with 8 probes took 17 s where 1264 with 16 took 30 s, both finding
every true nearest neighbour of 5000 sampled queries.
"""

from __future__ import annotations

import math

import faiss
import numpy as np

PROBES = 8
TRAINING_PER_LIST = 64  # faiss warns below 39 training vectors per cluster


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1, as float32 (a zero row stays zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def nearest(vectors: np.ndarray, k: int, exact_max: int, seed: int = 0
            ) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most similar other rows of each row: (similarities, indices), each n x k,
    most similar first; -1 pads where fewer than ``k`` others exist."""
    unit = unit_rows(vectors)
    n, dim = unit.shape
    k = min(k, n - 1)
    if k < 1:
        return np.empty((n, 0), np.float32), np.empty((n, 0), np.int64)
    if n <= exact_max:
        index = faiss.IndexFlatIP(dim)
    else:
        lists = int(2 * math.sqrt(n))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists,
                                   faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(seed).choice(n, min(n, lists * TRAINING_PER_LIST),
                                                    replace=False)
        index.train(unit[np.sort(sample)])
        index.nprobe = PROBES
    index.add(unit)
    similarities, indices = index.search(unit, k + 1)
    return _without_self(similarities, indices, k)


def _without_self(similarities: np.ndarray, indices: np.ndarray, k: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Drop each row's own entry (or, where an exact copy outranked it, the last one)."""
    own = indices == np.arange(len(indices))[:, None]
    drop = np.where(own.any(axis=1), own.argmax(axis=1), k)
    keep = np.ones_like(own)
    keep[np.arange(len(indices)), drop] = False
    return (similarities[keep].reshape(-1, k), indices[keep].reshape(-1, k))
