"""The plots people look at: the augmentation preview, the evaluation PNGs and DVC's plots."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.conftest import REPO
from tests.images import write_class_folder
from tlpipe.config import AugmentConfig
from tlpipe.reports import plots as evaluate
from tlpipe.reports.augment_preview import (
    preview_row_label,
    preview_titles,
    save_augmentation_preview,
)
from tlpipe.reports.mistakes import mistakes_of, render_mistakes
from tlpipe.stages.evaluate import prediction_rows
from tlpipe.vectors.backbones import Preprocessing

TINY = Preprocessing(input_size=32, resize_size=36, interpolation="bilinear",
                     mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
# A fine-tuning history as tlpipe/stages/finetune.py writes it: 0-based record indices.
HISTORY = {"epochs": [{"epoch": 0, "train_loss": 0.5, "val_loss": 0.4, "val_accuracy": 0.8},
                      {"epoch": 1, "train_loss": 0.3, "val_loss": 0.35, "val_accuracy": 0.9}],
           "best_epoch": 1, "start": {"val_loss": 0.45, "val_accuracy": 0.75}}


def test_preview_titles_name_the_original_and_the_views():
    assert preview_titles(3) == ["original", "view 1", "view 2", "view 3"]
    assert preview_row_label("train/bees/1092977343_cb42b38d62.jpg") == "bees\n1092977343_c"


def test_preview_has_a_title_band_and_a_label_band(tmp_path):
    paths = write_class_folder(tmp_path / "train", "ants", 2)
    target = save_augmentation_preview(tmp_path, [str(p.relative_to(tmp_path)) for p in paths],
                                       TINY, AugmentConfig(), 0, tmp_path / "preview.png",
                                       views_per_image=2)
    # make_grid's size for 2 rows of 3 tiles of 32 px, padding 4: the labels come on top of it.
    grid_width, grid_height = 3 * 36 + 4, 2 * 36 + 4
    image = np.asarray(Image.open(target).convert("L"))
    top, left = image.shape[0] - grid_height, image.shape[1] - grid_width
    assert top > 0 and left > 0
    assert image[:top].min() < 128 and image[top:, :left].min() < 128  # text drawn in both


def test_curve_points_number_epochs_from_one_with_the_start_at_zero():
    points = evaluate.curve_points(HISTORY)
    assert [p["epoch"] for p in points] == [0, 1, 2]
    assert all(type(p["epoch"]) is int for p in points)
    assert points[0] == {"epoch": 0, "train_loss": None, "val_loss": 0.45, "val_accuracy": 0.75}
    assert points[2]["val_loss"] == 0.35  # record 1, after the second epoch
    head = evaluate.curve_points({"epochs": HISTORY["epochs"], "best_epoch": 1})
    assert [p["epoch"] for p in head] == [1, 2]


def test_learning_curves_png_plots_the_same_epochs(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(evaluate, "_save_figure", lambda figure, target: figures.append(figure))
    evaluate.plot_learning_curves({"finetune": evaluate.curve_points(HISTORY)}, tmp_path / "c")
    train, val = figures[0].axes[0].get_lines()
    assert list(train.get_xdata()) == [1, 2] and list(val.get_xdata()) == [0, 1, 2]


def test_confusion_png_has_actual_rows_and_predicted_columns(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(evaluate, "_save_figure", lambda figure, target: figures.append(figure))
    # scikit-learn's matrix[actual][predicted]: 1 ant taken for a bee, 2 bees for ants.
    evaluate.plot_confusion_matrix([[5, 1], [2, 7]], ["ants", "bees"], tmp_path / "m")
    axis = figures[0].axes[0]
    assert (axis.get_xlabel(), axis.get_ylabel()) == ("predicted", "actual")
    cells = {tuple(map(int, text.get_position())): text.get_text() for text in axis.texts}
    # (x = column, y = row): the count, and its share of the actual class (the row).
    assert cells[(1, 0)] == "1\n17%" and cells[(0, 1)] == "2\n22%"
    colours = axis.images[0].get_array()
    assert colours[1][1] == pytest.approx(7 / 9)  # coloured by share, not by count


@pytest.fixture(scope="module")
def dvc_plots(tmp_path_factory) -> dict:
    """`dvc plots show --json` on the project's plot definitions and templates, small data."""
    repo = tmp_path_factory.mktemp("plots")
    shutil.copytree(REPO / "plots", repo / "plots")
    plots = yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"plots": plots}))
    data = repo / "outputs" / "evaluate"
    data.mkdir(parents=True)
    curves = evaluate.curve_points(HISTORY)
    for name in ("curves_head.json", "curves_finetune.json"):
        (data / name).write_text(json.dumps(curves))
    pairs = [("ants", "ants")] * 5 + [("ants", "bees"), ("bees", "ants")]
    probabilities = np.array([[0.9, 0.1] if predicted == "ants" else [0.2, 0.8]
                              for _, predicted in pairs])
    truth = np.array([["ants", "bees"].index(actual) for actual, _ in pairs])
    (data / "predictions.json").write_text(json.dumps(prediction_rows(
        [f"{i}.jpg" for i in range(len(pairs))], truth, probabilities, ["ants", "bees"])))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for command in (["init", "--no-scm", "-q"], ["plots", "show", "--json"]):
        result = subprocess.run([sys.executable, "-m", "dvc", *command], cwd=repo, env=env,
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert not shown.get("errors"), shown["errors"]
    return {name: renders[0]["content"] for name, renders in shown["data"].items()}


def test_dvc_confusion_plot_has_the_png_axes_and_counts(dvc_plots):
    spec = dvc_plots["test confusion matrix"]["spec"]
    assert spec["encoding"]["x"]["field"] == "predicted"  # columns, as in the PNG
    assert spec["encoding"]["y"]["field"] == "actual"  # rows
    texts = [layer for layer in spec["layer"] if layer.get("mark") == "text"]
    # The count itself, unconditionally (DVC's own template hides it behind a checkbox).
    assert [layer["encoding"]["text"] for layer in texts] == [
        {"field": "xy_count", "type": "quantitative"}]


@pytest.mark.parametrize("plot", ["head training loss", "fine-tuning loss"])
def test_dvc_curves_have_whole_epoch_ticks(dvc_plots, plot):
    content = dvc_plots[plot]
    x = content["encoding"]["x"]
    assert x["field"] == "epoch" and x["axis"]["tickMinStep"] == 1 and x["axis"]["format"] == "d"
    assert {row["epoch"] for row in content["data"]["values"]} == {0, 1, 2}


def test_predictions_carry_every_probability_and_the_mistakes_page_shows_the_worst_first(
        tmp_path):
    classes = ["cat", "dog", "<b>fox</b>"]
    paths = []
    for index in range(4):
        Image.new("RGB", (40 + 10 * index, 30), (60 * index, 90, 120)).save(
            tmp_path / f"{index}.png")
        paths.append(f"{index}.png")
    paths.append("gone.png")  # deleted after scoring: the page says so, and still renders
    probabilities = np.array([[0.8, 0.1, 0.1], [0.3, 0.6, 0.1], [0.05, 0.05, 0.9],
                              [0.2, 0.7, 0.1], [0.1, 0.2, 0.7]])
    truth = np.array([0, 0, 1, 1, 0])
    rows = prediction_rows(paths, truth, probabilities, classes)
    assert rows[1] == {"path": "1.png", "actual": "cat", "predicted": "dog",
                       "probability": 0.6, "prob_cat": 0.3, "prob_dog": 0.6,
                       "prob_<b>fox</b>": 0.1}
    assert [row["path"] for row in mistakes_of(rows)] == ["2.png", "gone.png", "1.png"]

    page = render_mistakes(rows, classes, tmp_path, max_images=2)
    assert "3 of 5 test images misclassified; the 2 most confident shown" in page
    assert page.count("<figure>") == 2 and page.index("2.png") < page.index("gone.png")
    assert "cannot show" in page and "1.png</figcaption>" not in page
    assert "<b>fox</b>" not in page and "&lt;b&gt;fox&lt;/b&gt;" in page
    assert "data:image/jpeg;base64," in page
    assert "No mistakes" in render_mistakes(rows[:1], classes, tmp_path, max_images=5)

