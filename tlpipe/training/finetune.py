"""Fine-tuning as deep as the data needs: a search over how many top blocks train and at what
learning rate, by successive halving on validation, within a time budget.

Every candidate (``finetune.unfreeze_blocks`` x ``finetune.lr`` x ``finetune.batchnorm``) trains
its first epoch; after each epoch the better half by class-balanced validation loss goes on (an
epoch counts only with no lower selection metric, macro-F1 by default, than the starting head,
as early stopping counts it), until one is left, which trains
on to early stopping or ``finetune.epochs``. Each candidate's schedule spans all the epochs, so
the one left ends exactly as it would have trained alone. The test split is never read. When
the next epochs would pass ``finetune.budget_minutes``, the search keeps its best candidate so
far, and training stops where the budget ends; the result says so. A checkpoint per candidate
and the search's state after every epoch let a killed search resume where it was.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import distributed, nn
from tqdm.auto import tqdm

from tlpipe.config import AugmentConfig, FinetuneConfig
from tlpipe.fsio import set_aside, sha256_text, write_json
from tlpipe.training.early_stopping import TrainingHistory
from tlpipe.training.model import Classifier
from tlpipe.training.tuning_run import Candidate, FinetuneData, Forecast, TuningRun
from tlpipe.vectors.backbones import Backbone

__all__ = ["Candidate", "FinetuneData", "FinetuneResult", "candidates_for", "finetune",
           "search_lines"]


@dataclass
class FinetuneResult:
    model: Classifier  # the best epoch's, or the starting model if no epoch beat it
    history: TrainingHistory  # the chosen candidate's epochs
    resumed_from_epoch: int | None  # the last completed epoch found in a checkpoint, if any
    epochs_run: int  # epochs trained by this call, all candidates together
    estimated_seconds: float | None = None  # forecast from the first batches of this call
    candidate: Candidate | None = None  # the one chosen
    search: list[dict] = field(default_factory=list)  # every candidate: what became of it
    budget_note: str | None = None  # set when the budget cut the search or the training

    @property
    def improved(self) -> bool:
        """Whether some epoch beat the starting model on validation."""
        return self.history.best_epoch >= 0


def candidates_for(config: FinetuneConfig, block_count: int) -> list[Candidate]:
    """Every (depth, learning rate, BatchNorm) combination of the settings, depths resolved
    against the backbone's blocks ("half", "all", or at most all), cheapest first, without
    repeats."""
    depths = []
    for depth in config.unfreeze_blocks:
        blocks = {"all": block_count, "half": math.ceil(block_count / 2)}.get(depth, depth)
        depths.append(min(int(blocks), block_count))
    return [Candidate(blocks, lr, norm) for blocks in sorted(set(depths)) for lr in config.lr
            for norm in dict.fromkeys(config.batchnorm)]


def finetune(backbone: Backbone, head: nn.Module, data: FinetuneData, config: FinetuneConfig,
             augment: AugmentConfig | None, seed: int, checkpoint: Path, device: torch.device,
             on_epoch_end: Callable[[int, dict], None] | None = None,
             selection_metric: str = "macro_f1") -> FinetuneResult:
    """Search the candidates and train the best on ``device``; resume from ``checkpoint``
    (one file per candidate beside it, and the search's state) if a killed call left them.

    ``checkpoint`` must be unique to this call's inputs (the caller keys it by content), so a
    checkpoint found there always belongs to the same search.
    """
    candidates = candidates_for(config, len(backbone.blocks))
    search = _SearchState.load(checkpoint, candidates)
    alive = [TuningRun(candidate, backbone, head, data, config, augment, seed,
                       _candidate_checkpoint(checkpoint, candidate, len(candidates)), device,
                       selection_metric)
             for candidate in candidates if candidate.name in search.alive]
    started = time.perf_counter()
    shared_start = None
    for run in alive:  # the starting head is scored once, for every candidate not resumed
        start = run.start(shared_start)
        if run.resumed_from is None:
            shared_start = start
    speak = alive[0].rank.index == 0
    epochs_ahead = _epochs_ahead(alive, config)
    forecast = Forecast(alive[0].steps_per_epoch * epochs_ahead, alive[0].validation_s,
                        epochs_ahead, speak)
    epochs_run, budget_notes, reported = 0, [], set()

    def over_budget(run: TuningRun) -> bool:
        ahead = time.perf_counter() - started + _epoch_seconds(run, alive)
        return _agreed(ahead > config.budget_minutes * 60)

    while unfinished := [run for run in alive if not run.finished]:
        # Candidates that a killed search left an epoch behind catch up first.
        epoch = min(run.next_epoch for run in unfinished)
        for run in [run for run in unfinished if run.next_epoch == epoch]:
            if over_budget(run):
                break
            record = run.train_epoch(forecast)
            epochs_run += 1
            if on_epoch_end is not None and len(alive) == 1:
                reported.add(record["epoch"])
                on_epoch_end(record["epoch"], record)
        else:
            if len(alive) > 1:
                survivors = _best(alive)[:math.ceil(len(alive) / 2)]
                search.cut(alive, survivors, f"halved out after epoch {epoch + 1}")
                alive = survivors
            search.save(speak)
            continue
        budget = f"finetune.budget_minutes ({config.budget_minutes:g}) reached"
        if len(alive) == 1:
            budget_notes.append(f"{budget} before epoch {alive[0].next_epoch + 1}")
            break
        # The best so far goes on alone, for what is left of the budget.
        survivors = _best([run for run in alive if run.history.epochs] or alive[:1])[:1]
        search.cut(alive, survivors, "the budget ran out")
        alive = survivors
        search.save(speak)
        budget_notes.append(f"{budget}: the search stopped at {alive[0].candidate.name}")
    chosen = _best(alive)[0]
    if on_epoch_end is not None and len(candidates) > 1:  # its epochs before it was alone
        for record in chosen.history.epochs:
            if record["epoch"] not in reported:
                on_epoch_end(record["epoch"], record)
    return FinetuneResult(chosen.best_model(), chosen.history, chosen.resumed_from, epochs_run,
                          forecast.estimate, chosen.candidate,
                          search.table(candidates, alive, chosen),
                          "; ".join(budget_notes) or None)


def search_lines(search: list[dict]) -> list[str]:
    """The fine-tune search as a small table: candidate, epochs, validation, seconds, outcome."""
    lines = [f"{'candidate':<31} {'epochs':>6} {'val loss':>9} {'val acc':>8} {'val F1':>8} "
             f"{'seconds':>8}  outcome"]

    def figure(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    for row in search:
        lines.append(f"{row['candidate']:<31} {row.get('epochs', '-'):>6} "
                     f"{figure(row.get('best_val_loss')):>9} "
                     f"{figure(row.get('best_val_accuracy')):>8} "
                     f"{figure(row.get('best_val_macro_f1')):>8} "
                     f"{row.get('seconds', '-'):>8}  {row['outcome']}")
    return lines


def _best(runs: list[TuningRun]) -> list[TuningRun]:
    """Lowest validation loss first (counted as early stopping counts it); on a tie, which
    is what candidates that have not yet beaten the starting head share, the lower loss of
    the latest epoch (the one nearer to beating it), then the candidate listed first."""
    def latest(run: TuningRun) -> float:
        return run.history.epochs[-1]["val_loss"] if run.history.epochs else math.inf

    return sorted(runs, key=lambda run: (run.best_loss, latest(run)))


def _epoch_seconds(run: TuningRun, alive: list[TuningRun]) -> float:
    """An epoch of ``run`` as measured, else as long as the slowest measured epoch of the
    candidates beside it (deeper ones cost more), else unknown (0: the first epoch runs)."""
    measured = [seconds for other in alive for seconds in other.seconds[-1:]]
    return run.seconds[-1] if run.seconds else max(measured, default=0.0)


def _epochs_ahead(runs: list[TuningRun], config: FinetuneConfig) -> int:
    """Epochs left if the halving goes its whole way: the first rounds train several."""
    alive, total, epoch = len(runs), 0, min(run.next_epoch for run in runs)
    while epoch < config.epochs:
        total, epoch, alive = total + alive, epoch + 1, math.ceil(alive / 2)
    return total


def _agreed(decision: bool) -> bool:
    """The first process's decision, in every process (their clocks differ)."""
    if distributed.is_available() and distributed.is_initialized():
        shared = [decision]
        distributed.broadcast_object_list(shared, src=0)
        return bool(shared[0])
    return decision


def _candidate_checkpoint(checkpoint: Path, candidate: Candidate, count: int) -> Path:
    if count == 1:
        return checkpoint
    norms = "-bn" if candidate.batchnorm == "train" else ""
    return checkpoint.with_name(f"{checkpoint.stem}-{candidate.blocks}b-{candidate.lr:g}{norms}.pt")


@dataclass
class _SearchState:
    """Which candidates are still in, and what became of the others (their row of the table,
    outcome included): saved after every epoch, so a resumed search still reports them."""

    alive: list[str]
    out: dict[str, dict] = field(default_factory=dict)  # candidate name -> its final row
    path: Path | None = None

    @classmethod
    def load(cls, checkpoint: Path, candidates: list[Candidate]) -> _SearchState:
        """The saved state, if it matches the digest saved with it; a file that does not is
        set aside with a warning, and the search starts with every candidate in."""
        path = checkpoint.with_name(f"{checkpoint.stem}-search.json")
        if path.is_file():
            try:
                saved = json.loads(path.read_text())
                if saved["sha256"] == _digest(saved["alive"], saved["out"]):
                    return cls(saved["alive"], saved["out"], path=path)
            except (ValueError, KeyError, TypeError):
                pass
            tqdm.write(f"finetune: WARNING: {path}: its content does not match the digest "
                       f"written with it; set aside as {set_aside(path).name}, every "
                       "candidate of the search is in again")
        return cls([candidate.name for candidate in candidates], path=path)

    def cut(self, among: list[TuningRun], survivors: list[TuningRun], why: str) -> None:
        for run in among:
            if run not in survivors:
                self.out[run.candidate.name] = _row(run, why)
        self.alive = [run.candidate.name for run in survivors]

    def save(self, writer: bool) -> None:
        if writer:
            write_json(self.path, {"alive": self.alive, "out": self.out,
                                   "sha256": _digest(self.alive, self.out)})

    def table(self, candidates: list[Candidate], alive: list[TuningRun],
              chosen: TuningRun) -> list[dict]:
        """One row per candidate, in the order of the settings."""
        rows = {**self.out, **{run.candidate.name: _row(run, "chosen" if run is chosen
                                                      else "out") for run in alive}}
        return [rows[candidate.name] for candidate in candidates if candidate.name in rows]


def _digest(alive: list[str], out: dict[str, dict]) -> str:
    return sha256_text(json.dumps({"alive": alive, "out": out}, sort_keys=True))


def _row(run: TuningRun, outcome: str) -> dict:
    """A candidate's settings, epochs, best validation figures and seconds (this call's)."""
    best = next((e for e in run.history.epochs if e["epoch"] == run.history.best_epoch), None)
    return {**asdict(run.candidate), "candidate": run.candidate.name,
            "epochs": len(run.history.epochs), "best_val_loss": run.best_loss,
            "best_val_accuracy": best["val_accuracy"] if best else None,
            "best_val_macro_f1": best.get("val_macro_f1") if best else None,
            "seconds": round(sum(run.seconds), 2), "outcome": outcome}
