"""The Great Expectations gate on folders the tests break on purpose."""

from __future__ import annotations

import shutil

import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.images import decompression_bomb, odd_but_valid, truncated_jpeg, write_class_folder
from tlpipe.cli.main import app
from tlpipe.config import DataConfig, SplitConfig, ValidationConfig
from tlpipe.data.manifest import build_manifest
from tlpipe.data.validation import validate_manifest

CONFIG = ValidationConfig()


def _gate(root, config=CONFIG, expected=None):
    manifest = build_manifest(root, DataConfig(), SplitConfig(), config.max_pixels, workers=2)
    return validate_manifest(manifest, config, expected)


def _failed(report) -> dict[str, list[str]]:
    return {r.rule: [o.get("path") or o.get("label") for o in r.offenders]
            for r in report.failures}


@pytest.fixture
def healthy(tmp_path):
    write_class_folder(tmp_path, "ants", 12)
    write_class_folder(tmp_path, "bees", 12)
    return tmp_path


def test_a_healthy_folder_passes_every_rule(healthy):
    report, kept = _gate(healthy, expected=["ants", "bees"])
    assert report.passed and not report.failures and len(kept) == 24


def test_broken_files_fail_by_name(healthy):
    (healthy / "ants" / "zero.jpg").write_bytes(b"")
    (healthy / "ants" / "notes.jpg").write_text("definitely not a JPEG")
    truncated_jpeg(healthy / "bees" / "cut.jpg")
    report, _ = _gate(healthy)
    assert not report.passed
    assert sorted(_failed(report)["decodable"]) == ["ants/notes.jpg", "ants/zero.jpg",
                                                   "bees/cut.jpg"]


def test_decompression_bomb_fails_the_pixel_rule(healthy):
    decompression_bomb(healthy / "bees" / "bomb.png")
    report, _ = _gate(healthy)
    assert _failed(report)["max_pixels"] == ["bees/bomb.png"]
    detail = next(r for r in report.failures if r.rule == "max_pixels").offenders[0]["detail"]
    assert "20000x20000" in detail


def test_identical_content_in_two_classes_fails(healthy):
    shutil.copy2(healthy / "ants" / "ants_0.png", healthy / "bees" / "copy_of_ant.png")
    report, _ = _gate(healthy)
    assert sorted(_failed(report)["duplicates"]) == ["ants/ants_0.png", "bees/copy_of_ant.png"]


def test_an_empty_class_fails_the_minimum(healthy):
    (healthy / "wasps").mkdir()
    report, _ = _gate(healthy)
    assert _failed(report)["min_images_per_class"] == ["wasps"]


def test_one_class_only_fails(tmp_path):
    write_class_folder(tmp_path, "ants", 12)
    report, _ = _gate(tmp_path)
    assert "class_count" in _failed(report)


def test_unexpected_classes_and_imbalance_fail(tmp_path):
    write_class_folder(tmp_path, "ants", 30)
    write_class_folder(tmp_path, "bees", 6)
    config = ValidationConfig(max_class_imbalance=3.0)
    report, _ = _gate(tmp_path, config, expected=["ants", "wasps"])
    failed = _failed(report)
    assert failed["class_imbalance"] == ["bees"]
    [outcome] = [r for r in report.failures if r.rule == "class_imbalance"]
    assert outcome.offenders[0]["detail"] == (
        "6 images; the largest class has 5.0x as many (limit 3)")  # measured beside the limit
    assert "expected_classes" in failed


def test_quarantine_excludes_offenders_and_records_them(healthy):
    Image.new("RGB", (8, 8)).save(healthy / "ants" / "tiny.png")
    config = ValidationConfig(quarantine=["min_side"])
    report, kept = _gate(healthy, config)
    assert report.passed
    assert [q["path"] for q in report.quarantined] == ["ants/tiny.png"]
    assert "ants/tiny.png" not in set(kept["path"])
    assert "QUARANTINED" in report.to_markdown()


def test_quarantine_cannot_hide_a_class_that_becomes_too_small(tmp_path):
    write_class_folder(tmp_path, "ants", 12)
    (tmp_path / "bees").mkdir()
    for index in range(6):
        (tmp_path / "bees" / f"broken{index}.jpg").write_bytes(b"nope" * index)
    report, _ = _gate(tmp_path, ValidationConfig(quarantine=["decodable"]))
    assert not report.passed and _failed(report)["min_images_per_class"] == ["bees"]


def test_odd_but_valid_images_pass(healthy):
    odd = odd_but_valid(healthy / "bees")
    assert len(odd) == 6
    report, kept = _gate(healthy, ValidationConfig(min_side=32))
    assert report.passed, report.to_markdown()
    assert len(kept) == 30


def test_cli_validate_exit_codes_and_names_the_file(healthy):
    runner = CliRunner()
    passed = runner.invoke(app, ["validate", str(healthy)])
    assert passed.exit_code == 0, passed.output
    (healthy / "bees" / "zero.jpg").write_bytes(b"")
    failed = runner.invoke(app, ["validate", str(healthy)])
    assert failed.exit_code == 1
    assert "bees/zero.jpg" in failed.output and "decodable" in failed.output


def test_cli_validate_flags_the_demo_sets_gif(demo_root, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("validation: {quarantine: []}\n")
    result = CliRunner().invoke(app, ["validate", str(demo_root), "--params", str(params)])
    assert result.exit_code == 1
    assert "train/ants/imageNotFound.gif: format GIF" in result.output


def test_digit_sized_greyscale_images_pass_with_the_defaults_and_a_pixel_does_not(tmp_path):
    """28-px greyscale digits (MNIST's size), ten classes, pass the default rules; a 1-px
    file among them fails `min_side`, named, with its size."""
    import numpy as np

    rng = np.random.default_rng(0)
    for digit in range(10):
        (tmp_path / f"digit {digit}").mkdir()
        for index in range(20):
            pixels = (rng.random((28, 28)) * 255 * (digit + 1) / 10).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(tmp_path / f"digit {digit}" / f"{index}.png")
    report, kept = _gate(tmp_path)
    assert report.passed and len(kept) == 200
    Image.new("L", (1, 1)).save(tmp_path / "digit 3" / "dot.png")
    report, _ = _gate(tmp_path)
    assert _failed(report) == {"min_side": ["digit 3/dot.png"]}
    offender = next(r for r in report.failures if r.rule == "min_side").offenders[0]
    assert offender["detail"] == "1x1 px"


def test_class_names_that_would_break_later_stages_fail_here(healthy):
    """A backslash broke an MLflow metric name at promotion, 255 characters one at evaluation,
    after training; a folder named ..dots was left out silently with its images."""
    long_name = "l" * 150  # its files, named after it, stay under 255 characters
    for name in ("back\\slash", long_name, "..dots"):
        write_class_folder(healthy, name, 12)
    write_class_folder(healthy / ".cache", "thumbnails", 3)  # images one level down: not a class
    report, _ = _gate(healthy)
    offenders = {o["label"]: o["detail"]
                 for o in next(r for r in report.failures if r.rule == "class_names").offenders}
    assert offenders == {"back\\slash": "holds a backslash or a control character",
                         long_name: "150 characters; a class name has at most 100",
                         "..dots": "a hidden folder (its name starts with '.') holding images: "
                                   "not read as a class"}
    assert "data.ignored_names" in report.to_markdown()

    shutil.rmtree(healthy / "back\\slash")
    shutil.rmtree(healthy / long_name)
    manifest = build_manifest(healthy, DataConfig(ignored_names=["..dots"]), SplitConfig(),
                              CONFIG.max_pixels, workers=2)
    assert validate_manifest(manifest, CONFIG)[0].passed  # left out on purpose


def test_a_symlink_loop_fails_by_name_instead_of_stopping_the_scan(healthy):
    (healthy / "ants" / "a.jpg").symlink_to("b.jpg")
    (healthy / "ants" / "b.jpg").symlink_to("a.jpg")
    (healthy / "bees" / "up").symlink_to("..")  # a folder loop: links to folders are not followed
    report, _ = _gate(healthy)
    assert _failed(report) == {"decodable": ["ants/a.jpg", "ants/b.jpg"]}
    decodable = next(r for r in report.failures if r.rule == "decodable")
    assert {o["detail"] for o in decodable.offenders} == {"a symlink loop; not read"}
