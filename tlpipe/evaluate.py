"""Held-out evaluation: the model's probabilities on images, and the plots people look at."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers or CI

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.ticker import MaxNLocator
from torch import nn
from tqdm.auto import tqdm

from tlpipe.backbones import Preprocessing
from tlpipe.fsio import write_atomic
from tlpipe.preprocess import ImageFolderRows, eval_transform, iterate_batches


def predict_probabilities(model: nn.Module, root: Path, paths: list[str],
                          preprocessing: Preprocessing, batch_size: int) -> np.ndarray:
    batches = iterate_batches(ImageFolderRows(root, paths, eval_transform(preprocessing)),
                              batch_size, workers=1)
    model.eval()
    outputs = []
    with torch.inference_mode():
        for images, _ in tqdm(batches, desc="evaluate", unit="batch",
                              total=-(-len(paths) // batch_size)):
            outputs.append(torch.softmax(model(images), dim=1))
    return torch.cat(outputs).numpy()


def _save_figure(figure: plt.Figure, target: Path) -> Path:
    write_atomic(target, lambda path: figure.savefig(path, format="png", dpi=120,
                                                     bbox_inches="tight"))
    plt.close(figure)
    return target


def plot_confusion_matrix(matrix: list[list[int]], classes: list[str], target: Path) -> Path:
    values = np.array(matrix)
    size = max(4.0, 0.6 * len(classes) + 2.5)
    figure, axis = plt.subplots(figsize=(size, size))
    axis.imshow(values, cmap="Blues")
    axis.set(xticks=range(len(classes)), yticks=range(len(classes)), xticklabels=classes,
             yticklabels=classes, xlabel="predicted", ylabel="true",
             title=f"Confusion matrix (test, n={values.sum()})")
    threshold = values.max() / 2 if values.size else 0
    for (row, column), count in np.ndenumerate(values):
        axis.text(column, row, str(count), ha="center", va="center",
                  color="white" if count > threshold else "black")
    return _save_figure(figure, target)


def plot_learning_curves(histories: dict[str, list[dict]], target: Path) -> Path:
    """One column per training stage: losses above, validation accuracy below."""
    stages = {name: epochs for name, epochs in histories.items() if epochs}
    figure, axes = plt.subplots(2, max(len(stages), 1), figsize=(5 * max(len(stages), 1), 6),
                                squeeze=False)
    for column, (name, epochs) in enumerate(stages.items()):
        x = [e["epoch"] + 1 for e in epochs]
        axes[0, column].plot(x, [e["train_loss"] for e in epochs], label="train loss")
        axes[0, column].plot(x, [e["val_loss"] for e in epochs], label="val loss")
        axes[0, column].set(title=f"{name}: loss", xlabel="epoch")
        axes[0, column].legend()
        axes[1, column].plot(x, [e["val_accuracy"] for e in epochs], color="tab:green")
        axes[1, column].set(title=f"{name}: validation accuracy", xlabel="epoch", ylim=(0, 1.02))
        for axis in axes[:, column]:
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.tight_layout()
    return _save_figure(figure, target)
