"""The text path's feature step: the plan of text views and their vectors in the feature store.

The counterpart of ``features`` for images. A view is a text: the plain view is the text
itself, augmented views are ``text_augment``'s perturbations of it, and every view's key is
the key of the text it is (``vector_key``), so equal views share one vector.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from tlpipe.config import BackboneConfig, TextConfig
from tlpipe.fsio import sha256_text
from tlpipe.vectors.backbones import Backbone, chosen_backbone
from tlpipe.vectors.code_digest import vector_code_digest
from tlpipe.vectors.store import PLAIN_VIEW, FeatureStore
from tlpipe.vectors.text_augment import augmented_text
from tlpipe.vectors.text_encoder import TextEncoder, loaded_once

PLAN_COLUMNS = ["path", "label", "split", "sha256", "view", "key", "text"]


class TextFill(NamedTuple):
    computed: int  # vectors encoded (each distinct view text once)
    cached: int
    seconds: float
    truncated: list[str]  # paths of the texts longer than the encoder reads


def plan_text_views(manifest: pd.DataFrame, views: int, encoder: TextEncoder,
                    config: TextConfig, seed: int) -> pd.DataFrame:
    """One row per vector needed, with the view's text: training texts get their plain view
    and ``views`` augmented ones, the others their plain view."""
    rows = []
    for row in manifest.itertuples(index=False):
        wanted = (PLAIN_VIEW, *range(1, views + 1)) if row.split == "train" else (PLAIN_VIEW,)
        for view in wanted:
            text = row.text if view == PLAIN_VIEW else augmented_text(
                row.text, row.sha256, view, seed, config.token_dropout)
            rows.append((row.path, row.label, row.split, row.sha256, view,
                         vector_key(encoder, text), text))
    return pd.DataFrame(rows, columns=PLAN_COLUMNS)


def fill_text_vectors(plan: pd.DataFrame, encoder: TextEncoder, store: FeatureStore,
                      config: TextConfig, device: torch.device) -> TextFill:
    """Encode the plan's texts the store lacks; say how many, and which texts were cut at the
    encoder's length limit (the features stage reports them: nothing is cut silently)."""
    start = time.perf_counter()
    result = text_vectors(encoder, plan["text"].tolist(), store, config.batch_size, device)
    plain = plan[plan["view"] == PLAIN_VIEW]
    cut = plain.loc[encoder.truncated(plain["text"].tolist()), "path"].tolist()
    return TextFill(result.computed, len(plan) - result.computed, time.perf_counter() - start,
                    cut)


@dataclass(frozen=True)
class TextVectors:
    vectors: np.ndarray  # one row per text, in order
    computed: int        # texts encoded by this call (each distinct text once)
    cached: int          # texts whose vector the store already held
    truncated: int       # of the computed ones, texts cut at the encoder's max_tokens


def vector_key(encoder: TextEncoder, text: str) -> str:
    """The feature-store key of ``text``'s vector: its content and everything else that
    decides the vector, this folder's code included (as for images)."""
    return sha256_text(hashlib.sha256(str(text).encode()).hexdigest(), encoder.digest,
                       vector_code_digest("text"))


def text_vectors(encoder: TextEncoder, texts: list[str], store: FeatureStore,
                 batch_size: int = 64, device: torch.device | None = None) -> TextVectors:
    """The vectors of ``texts`` from the feature store; those it lacks are encoded once each
    and stored first, so a killed call keeps every chunk it wrote."""
    keys = [vector_key(encoder, text) for text in texts]
    stored = store.index()
    missing = list(dict.fromkeys(key for key in keys if key not in stored))
    first = {key: text for key, text in zip(keys, texts, strict=True)}
    todo = [first[key] for key in missing]
    truncated = 0
    with store.writer() as writer:
        for start in range(0, len(todo), store.chunk_vectors):
            part = todo[start:start + store.chunk_vectors]
            vectors, cut = encoder.encode_counting(part, batch_size, device)
            writer.add(missing[start:start + len(part)], vectors)
            truncated += cut
    return TextVectors(store.read(keys), len(missing),
                       sum(key in stored for key in keys), truncated)


def chosen_model(choice: dict, settings: BackboneConfig, project_dir: Path) -> Backbone:
    """What made the features stage's vectors (its ``preprocessing.json``): the text encoder
    (no preprocessing; its transformer layers are the blocks), or the image backbone with the
    preprocessing chosen."""
    if choice.get("modality") != "text":
        return chosen_backbone(choice, settings, project_dir)
    folder = choice.get("encoder_folder")
    encoder = loaded_once(choice["backbone"], Path(project_dir) / folder if folder else None)
    return Backbone(choice["backbone"], encoder, encoder.dimension, None, encoder.digest,
                    blocks=encoder.blocks)
