"""The ladder at scale: candidates are scored on a stratified sample of images."""

from __future__ import annotations

import numpy as np
import torch

from tlpipe.config import HeadConfig
from tlpipe.training.cached import Features
from tlpipe.training.ladder import _sample_images, select


def features(counts: list[int], views: int = 2, seed: int = 0) -> Features:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(counts)), counts)
    groups = np.array([f"image{i}" for i in range(len(labels))])
    centres = rng.standard_normal((len(counts), 32)) * 3
    x = np.concatenate([centres[labels] + rng.standard_normal((len(labels), 32))
                        for _ in range(views + 1)])
    return Features(torch.tensor(x, dtype=torch.float32),
                     torch.tensor(np.tile(labels, views + 1)), np.tile(groups, views + 1),
                     np.repeat(np.arange(views + 1), len(labels)))


def test_the_sample_keeps_class_proportions_and_every_view_of_an_image():
    data = features([600, 300, 100])
    sample = _sample_images(data, 100, seed=3)
    images, first = np.unique(sample.groups, return_index=True)
    assert len(images) == 100
    assert np.bincount(sample.y.numpy()[first]).tolist() == [60, 30, 10]
    assert len(sample) == 300 and sorted(set(sample.views.tolist())) == [0, 1, 2]
    assert _sample_images(data, 5000, seed=3) is data  # small data: all of it


def test_selection_on_a_sample_still_picks_a_good_candidate():
    train, val = features([400, 400, 200], seed=1), features([150, 150, 50], views=0, seed=1)
    config = HeadConfig(candidates=["logistic", "knn"], logistic_c=[0.01, 1.0], knn_k=[5],
                        train_views=["plain"], min_val_images=50,
                        selection_train_images=120, selection_val_images=60)
    chosen, board = select(train, val, 3, config, seed=0)
    assert len(board) == 3 and board[0].protocol == "validation"
    assert chosen.name == next(row.candidate for row in board if row.chosen)
    assert max(row.score for row in board) > 0.9


def test_the_settings_accept_exactly_the_registered_head_kinds():
    """`head.candidates` is checked against the config's list; the ladder runs the registry's.
    A kind added to one and not the other would be refused, or never run."""
    from typing import get_args

    from tlpipe.config import HeadKind
    from tlpipe.training.head_kinds import KINDS

    assert set(get_args(HeadKind)) == set(KINDS)


def test_the_logistic_head_leaves_out_dimensions_constant_up_to_rounding():
    """Sentence encoders have them (all-MiniLM-L6-v2: two of 384 dimensions with a std of 1e-8
    against 0.05). Standardised, their float32 noise once became weights of 1e30 and more, and
    the first step of fine-tuning sent the loss from 0.3 to 230."""
    from tlpipe.training.ladder import Candidate, fit

    data = features([60, 60], views=0)
    data.x[:, 5] = 1e-3 + 1e-8 * torch.randn(len(data))  # constant but for rounding noise
    head, _, _ = fit(Candidate("logistic", {"C": 1.0}), data, None, 2, HeadConfig(), seed=0)
    weight = head[-1].weight.detach()
    assert torch.isfinite(weight).all() and weight[:, 5].abs().max() == 0
    with torch.no_grad():
        nudged = data.x.clone()
        nudged[:, 5] += 1e-3  # what a fine-tuning step may do to it
        assert torch.allclose(head(nudged), head(data.x))
    assert (head(data.x).argmax(1) == data.y).float().mean() > 0.95
