"""Fine-tuning on real images with the real pretrained backbone."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import copy_slice
from tlpipe.config import AugmentConfig, FinetuneConfig
from tlpipe.devices import CPU
from tlpipe.training.finetune import Candidate, FinetuneData, finetune
from tlpipe.training.heads import HeadSpec, build_head
from tlpipe.training.model import Classifier
from tlpipe.training.tuning_run import TuningRun, parameter_groups
from tlpipe.vectors.backbones import load_backbone

CONFIG = FinetuneConfig(epochs=2, batch_size=4, unfreeze_blocks=2, patience=5)


@pytest.fixture(scope="module")
def backbone():
    return load_backbone()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = copy_slice(tmp_path_factory.mktemp("ft"), {"train": 4, "val": 2})

    def rows(split):
        paths = sorted(p.relative_to(root).as_posix() for p in (root / split).rglob("*.jpg"))
        return paths, [0 if "/ants/" in p else 1 for p in paths]

    (train_paths, train_labels), (val_paths, val_labels) = rows("train"), rows("val")
    return FinetuneData(root, train_paths, train_labels, val_paths, val_labels, 2)


def _head(backbone):
    torch.manual_seed(0)
    return build_head(HeadSpec("linear", backbone.num_features, 2, dropout=0.2))


def test_batchnorm_statistics_stay_bit_identical_through_an_epoch(backbone, data, tmp_path):
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()
              if "running" in k or "num_batches" in k}
    config = CONFIG.model_copy(update={"epochs": 1})
    result = finetune(backbone, _head(backbone), data, config, AugmentConfig(), 0,
                      tmp_path / "ck.pt", CPU)
    after = result.model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # Weights of the unfrozen top did move, so the epoch really trained.
    top = backbone.model.conv_head.weight
    assert not torch.equal(top, result.model.backbone.conv_head.weight)
    result.model.train()
    assert all(not m.training for m in result.model.backbone.modules()
               if isinstance(m, torch.nn.BatchNorm2d))


def test_batchnorm_train_re_estimates_the_statistics_of_the_unfrozen_blocks_only(
        backbone, data, tmp_path):
    config = CONFIG.model_copy(update={"epochs": 1, "batchnorm": "train"})
    candidate = Candidate(blocks=2, lr=1e-4, batchnorm="train")
    assert candidate.name == "2 blocks, lr 0.0001, BN train"
    run = TuningRun(candidate, backbone, _head(backbone), data, config, AugmentConfig(), 0,
                    tmp_path / "ck.pt", CPU)
    run.start()
    run.train_epoch()
    names = {id(module): name for name, module in backbone.model.named_modules()}
    unfrozen = {names[id(module)] for block in backbone.blocks[-2:] for module in block.modules()
                if isinstance(module, torch.nn.BatchNorm2d)}
    before, after = backbone.model.state_dict(), run.model.backbone.state_dict()
    moved = {key.rpartition(".")[0] for key in before if key.endswith("running_mean")
             and not torch.equal(before[key], after[key])}
    assert moved == unfrozen and len(unfrozen) >= 2
    run.model.train()  # a finished model's BatchNorm layers are in eval mode again
    assert all(not m.training for m in run.model.backbone.modules()
               if isinstance(m, torch.nn.BatchNorm2d))


def test_learning_rates_shrink_deeper_and_only_the_top_blocks_train(backbone):
    model = Classifier(backbone.model, _head(backbone))
    groups = parameter_groups(model, [list(b.parameters()) for b in backbone.blocks],
                              Candidate(blocks=2, lr=1e-4), CONFIG.layer_decay)
    assert [g["lr"] for g in groups] == [1e-4, 5e-5, 2.5e-5]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for g in groups for p in g["params"]}
    assert not any(p.requires_grad for p in backbone.blocks[0].parameters())
    backbone.model.requires_grad_(False)  # leave the shared fixture frozen


def _killed_after_first_epoch(backbone, data, checkpoint):
    """A run of CONFIG (seed 3) interrupted as its first epoch ends; its checkpoint."""
    def stop(epoch, record):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(backbone, _head(backbone), data, CONFIG, AugmentConfig(), 3, checkpoint, CPU,
                 on_epoch_end=stop)
    return checkpoint


def test_an_interrupted_run_resumes_and_ends_where_an_uninterrupted_one_does(
        backbone, data, tmp_path):
    whole = finetune(backbone, _head(backbone), data, CONFIG, AugmentConfig(), 3,
                     tmp_path / "whole.pt", CPU)
    checkpoint = _killed_after_first_epoch(backbone, data, tmp_path / "split.pt")
    resumed = finetune(backbone, _head(backbone), data, CONFIG, AugmentConfig(), 3, checkpoint, CPU)
    assert resumed.resumed_from_epoch == 0 and resumed.epochs_run == 1
    assert [e["epoch"] for e in resumed.history.epochs] == [0, 1]
    assert resumed.history.epochs == whole.history.epochs
    for key, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_loader_threads_change_nothing_the_model_learns(backbone, data, tmp_path):
    """Augmentation draws from per-image seeds and dropout holds the global RNG: two runs,
    inline and with three loader threads, end byte-identical."""
    runs = [finetune(backbone, _head(backbone), data,
                     CONFIG.model_copy(update={"epochs": 1, "batch_size": 1,
                                             "num_workers": workers}),
                     AugmentConfig(), 5, tmp_path / f"workers{workers}.pt", CPU)
            for workers in (0, 3)]
    assert runs[0].history.epochs == runs[1].history.epochs
    for key, value in runs[0].model.state_dict().items():
        assert torch.equal(value, runs[1].model.state_dict()[key]), key


SEARCH = CONFIG.model_copy(update={"epochs": 3, "unfreeze_blocks": [1, "all"],
                                   "lr": [1e-4, 1e-3]})


def _same_weights(one, other):
    return all(torch.equal(value, other.state_dict()[key])
               for key, value in one.state_dict().items())


def test_the_search_halves_to_one_candidate_that_ends_as_it_would_alone(backbone, data,
                                                                       tmp_path):
    """Four candidates train an epoch, two a second, one the third: the one chosen has the
    lowest validation loss, and its model and curves are those of training it alone."""
    searched = finetune(backbone, _head(backbone), data, SEARCH, AugmentConfig(), 3,
                        tmp_path / "search.pt", CPU)
    assert searched.epochs_run == 4 + 2 + 1 and searched.budget_note is None
    assert sorted(row["epochs"] for row in searched.search) == [1, 1, 2, 3]
    chosen = next(row for row in searched.search if row["outcome"] == "chosen")
    assert chosen["epochs"] == 3 and chosen["best_val_loss"] == min(
        row["best_val_loss"] for row in searched.search)
    alone = finetune(backbone, _head(backbone), data,
                     SEARCH.model_copy(update={"unfreeze_blocks": [searched.candidate.blocks],
                                               "lr": [searched.candidate.lr]}),
                     AugmentConfig(), 3, tmp_path / "alone.pt", CPU)
    assert alone.search[0]["outcome"] == "chosen"
    assert alone.history.epochs == searched.history.epochs
    assert _same_weights(alone.model, searched.model)


def _search_killed_after(epochs: int, backbone, data, checkpoint, monkeypatch) -> None:
    """Run the search on ``checkpoint`` and interrupt it when ``epochs`` candidate epochs
    have been trained, as Ctrl-C would."""
    train_epoch, calls = TuningRun.train_epoch, []

    def killed(run, forecast=None):
        if len(calls) == epochs:
            raise KeyboardInterrupt
        calls.append(run.candidate)
        return train_epoch(run, forecast)

    monkeypatch.setattr(TuningRun, "train_epoch", killed)
    with pytest.raises(KeyboardInterrupt):
        finetune(backbone, _head(backbone), data, SEARCH, AugmentConfig(), 3, checkpoint, CPU)
    monkeypatch.setattr(TuningRun, "train_epoch", train_epoch)


def test_a_killed_search_resumes_where_it_was_and_ends_as_an_uninterrupted_one(
        backbone, data, tmp_path, monkeypatch):
    whole = finetune(backbone, _head(backbone), data, SEARCH, AugmentConfig(), 3,
                     tmp_path / "whole.pt", CPU)
    # Three of the four candidates have trained their first epoch.
    _search_killed_after(3, backbone, data, tmp_path / "killed.pt", monkeypatch)
    resumed = finetune(backbone, _head(backbone), data, SEARCH, AugmentConfig(), 3,
                       tmp_path / "killed.pt", CPU)
    assert resumed.epochs_run == 1 + 2 + 1  # the fourth first epoch, then as before
    assert resumed.candidate == whole.candidate
    assert resumed.history.epochs == whole.history.epochs
    assert _same_weights(resumed.model, whole.model)
    assert ([(row["candidate"], row["outcome"]) for row in resumed.search]
            == [(row["candidate"], row["outcome"]) for row in whole.search])


def test_the_budget_stops_the_search_and_says_so(backbone, data, tmp_path):
    """A budget smaller than one epoch: the search stops before it starts, nothing trains,
    the starting head is the model, and the result says which setting stopped it."""
    result = finetune(backbone, _head(backbone), data,
                      SEARCH.model_copy(update={"budget_minutes": 1e-4}), AugmentConfig(), 3,
                      tmp_path / "budget.pt", CPU)
    assert result.epochs_run == 0 and not result.improved
    assert "finetune.budget_minutes (0.0001) reached: the search stopped" in result.budget_note
    assert "reached before epoch 1" in result.budget_note
    assert sum(row["outcome"] == "the budget ran out" for row in result.search) == 3


def test_a_corrupted_checkpoint_is_set_aside_and_the_training_starts_over(
        backbone, data, tmp_path, capsys):
    whole = finetune(backbone, _head(backbone), data, CONFIG, AugmentConfig(), 3,
                     tmp_path / "whole.pt", CPU)
    checkpoint = _killed_after_first_epoch(backbone, data, tmp_path / "flipped.pt")
    damaged = bytearray(checkpoint.read_bytes())
    damaged[len(damaged) // 2] ^= 0x01  # one bit, somewhere in the saved tensors
    checkpoint.write_bytes(bytes(damaged))

    again = finetune(backbone, _head(backbone), data, CONFIG, AugmentConfig(), 3, checkpoint,
                     CPU)
    printed = capsys.readouterr()
    assert "flipped.pt: its content does not match the digest" in printed.out + printed.err
    assert (tmp_path / "flipped.pt.corrupt").read_bytes() == bytes(damaged)  # kept
    assert again.resumed_from_epoch is None and again.epochs_run == 2  # started over
    assert again.history.epochs == whole.history.epochs
    assert _same_weights(again.model, whole.model)


def test_an_edited_search_state_is_set_aside_and_every_candidate_is_in_again(
        backbone, data, tmp_path, monkeypatch, capsys):
    whole = finetune(backbone, _head(backbone), data, SEARCH, AugmentConfig(), 3,
                     tmp_path / "whole.pt", CPU)
    # Every candidate has trained its first epoch, and some were cut.
    _search_killed_after(4, backbone, data, tmp_path / "killed.pt", monkeypatch)
    state_file = tmp_path / "killed-search.json"
    state = json.loads(state_file.read_text())
    assert len(state["alive"]) < 4 and state["sha256"]
    # A plausible edit, valid JSON: the loser brought back in place of the survivors.
    loser = next(iter(state["out"]))
    state_file.write_text(json.dumps({**state, "alive": [loser]}))
    resumed = finetune(backbone, _head(backbone), data, SEARCH, AugmentConfig(), 3,
                       tmp_path / "killed.pt", CPU)
    printed = capsys.readouterr()
    assert "killed-search.json: its content does not match the digest" in printed.out + \
        printed.err
    assert (tmp_path / "killed-search.json.corrupt").is_file()
    # Every candidate resumed from its own checkpoint, so the search ends as before.
    assert resumed.candidate == whole.candidate
    assert _same_weights(resumed.model, whole.model)
