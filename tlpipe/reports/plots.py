"""Held-out evaluation: the plots people look at."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers or CI

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

from tlpipe.fsio import write_atomic


def _save_figure(figure: plt.Figure, target: Path) -> Path:
    write_atomic(target, lambda path: figure.savefig(path, format="png", dpi=120,
                                                     bbox_inches="tight"))
    plt.close(figure)
    return target


def plot_confusion_matrix(matrix: list[list[int]], classes: list[str], target: Path) -> Path:
    """Rows actual, columns predicted (scikit-learn's layout), as the DVC plot in dvc.yaml.
    Coloured by each row's share (the recall of its class), so a rare class reads as clearly
    as a common one; each cell gives its count and that share."""
    values = np.array(matrix)
    totals = values.sum(axis=1, keepdims=True)
    shares = np.divide(values, totals, out=np.zeros(values.shape), where=totals > 0)
    size = max(4.0, 0.8 * len(classes) + 2.5)
    figure, axis = plt.subplots(figsize=(size, size))
    axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    axis.set(xticks=range(len(classes)), yticks=range(len(classes)), xlabel="predicted",
             ylabel="actual", title=f"Confusion matrix (test, n={values.sum()}; "
                                    "share of each actual class)")
    axis.set_xticklabels(classes, rotation=45 if len(classes) > 4 else 0, ha="right"
                         if len(classes) > 4 else "center")
    axis.set_yticklabels(classes)
    for (row, column), count in np.ndenumerate(values):
        axis.text(column, row, f"{count}\n{shares[row, column]:.0%}", ha="center",
                  va="center", fontsize=8 if len(classes) > 6 else 10,
                  color="white" if shares[row, column] > 0.5 else "black")
    return _save_figure(figure, target)


def curve_points(history: dict) -> list[dict]:
    """A training history as plotted (PNG and DVC alike): epoch N is after N epochs of training,
    so the records' 0-based indices shift by one, and epoch 0 is the validation of the starting
    model (``start``, if recorded): the baseline fine-tuning must beat, with no training loss."""
    start = history.get("start")
    before = [{"epoch": 0, "train_loss": None, **start}] if start else []
    return before + [{**record, "epoch": record["epoch"] + 1} for record in history["epochs"]]


def _series(points: list[dict], key: str) -> tuple[list[int], list[float]]:
    """The (epochs, values) of one figure, skipping epochs without it (no train loss at 0)."""
    pairs = [(point["epoch"], point[key]) for point in points if point.get(key) is not None]
    return [epoch for epoch, _ in pairs], [value for _, value in pairs]


def plot_learning_curves(curves: dict[str, list[dict]], target: Path) -> Path:
    """One column per training stage (points from ``curve_points``): losses above, validation
    accuracy below."""
    stages = {name: points for name, points in curves.items() if points}
    figure, axes = plt.subplots(2, max(len(stages), 1), figsize=(5 * max(len(stages), 1), 6),
                                squeeze=False)
    for column, (name, points) in enumerate(stages.items()):
        axes[0, column].plot(*_series(points, "train_loss"), marker="o", label="train loss")
        axes[0, column].plot(*_series(points, "val_loss"), marker="o", label="val loss")
        axes[0, column].set(title=f"{name}: loss", xlabel="epoch")
        axes[0, column].legend()
        axes[1, column].plot(*_series(points, "val_accuracy"), marker="o", color="tab:green")
        axes[1, column].set(title=f"{name}: validation accuracy", xlabel="epoch", ylim=(0, 1.02))
        for axis in axes[:, column]:
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.tight_layout()
    return _save_figure(figure, target)
