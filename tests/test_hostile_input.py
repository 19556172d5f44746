"""Hostile or careless input gets a clear refusal before anything runs: settings that would
train nonsense, files that would hang or flood a read, class names MLflow would reject."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.utils.validation import _validate_metric_name

from tests.conftest import cli_env, free_port, harness_env, make_project
from tests.images import write_class_folder
from tlpipe.config import DataConfig, SplitConfig, ValidationConfig
from tlpipe.data.manifest import build_manifest
from tlpipe.data.validation import validate_manifest
from tlpipe.metrics import flat_metrics
from tlpipe.params_file import ConfigError, parse_params


@pytest.mark.parametrize(("raw", "key", "why"), [
    ({"head": {"lr": float("inf")}}, "head.lr", "finite"),
    ({"finetune": {"lr": float("nan")}}, "finetune.lr.0", "finite"),  # the first of the list
    ({"finetune": {"epochs": True}}, "finetune.epochs", "not true"),
    ({"seed": False}, "seed", "not false"),
    ({"registry": {"model_name": "pets' OR name LIKE '%"}}, "registry.model_name", "pattern"),
])
def test_settings_that_would_train_nonsense_are_refused_naming_the_key(raw, key, why):
    with pytest.raises(ConfigError, match=rf"{key}: .*{why}"):
        parse_params(raw)


def test_booleans_stay_booleans():
    assert parse_params({"augment": {"trivial_augment": False}}).augment.trivial_augment is False


@pytest.mark.timeout(60)  # a FIFO that is opened blocks for ever, /dev/zero never ends
def test_fifos_and_links_to_devices_are_refused_unread(tmp_path):
    data = tmp_path / "data"
    for label in ("ants", "bees"):
        write_class_folder(data, label, 12)
    os.mkfifo(data / "ants" / "pipe.jpg")
    (data / "bees" / "zero.jpg").symlink_to("/dev/zero")
    manifest = build_manifest(data, DataConfig(), SplitConfig(), 10**6, workers=2)
    report, _ = validate_manifest(manifest, ValidationConfig())
    details = {o["path"]: o["detail"] for rule in report.failures for o in rule.offenders
               if rule.rule == "decodable"}
    assert "not a regular file" in details["ants/pipe.jpg"]
    assert "outside the data folder; not read" in details["bees/zero.jpg"]
    assert manifest.set_index("path").loc["bees/zero.jpg", "bytes"] == 0


def test_a_class_missing_from_a_split_fails_validation_with_its_counts(tmp_path):
    write_class_folder(tmp_path, "ants", 12)
    write_class_folder(tmp_path, "bees", 12)
    # All of one class in train/: none of it would be tested or validated.
    for split in ("train", "val", "test"):
        (tmp_path / "split" / split).mkdir(parents=True)
    (tmp_path / "ants").rename(tmp_path / "split" / "train" / "ants")
    (tmp_path / "bees").rename(tmp_path / "split" / "val" / "bees")
    write_class_folder(tmp_path / "split" / "train", "bees", 6, start=100)
    write_class_folder(tmp_path / "split" / "test", "bees", 4, start=200)
    manifest = build_manifest(tmp_path / "split", DataConfig(), SplitConfig(), 10**6)
    report, _ = validate_manifest(manifest, ValidationConfig())
    (coverage,) = [rule for rule in report.failures if rule.rule == "split_coverage"]
    assert [o["label"] for o in coverage.offenders] == ["ants"]
    assert "val 0, test 0" in coverage.offenders[0]["detail"]
    assert "val/ and test/" in report.to_markdown()


def test_one_image_per_class_fails_validation_before_the_preview_could_crash(tmp_path):
    """Was: min_images_per_class=1 passed, and the augmentation preview of an empty train
    split crashed (`stack expects a non-empty TensorList`)."""
    for label in ("ants", "bees"):
        write_class_folder(tmp_path, label, 1)
    manifest = build_manifest(tmp_path, DataConfig(), SplitConfig(), 10**6)
    report, _ = validate_manifest(manifest, ValidationConfig(min_images_per_class=1))
    (coverage,) = [rule for rule in report.failures if rule.rule == "split_coverage"]
    assert sorted(o["label"] for o in coverage.offenders) == ["ants", "bees"]


def test_any_class_folder_name_makes_valid_mlflow_metric_names():
    hostile = ["it's $(touch x)", 'say "hi"', "Großer Hund", "a;b|c", "..", "-"]
    metrics = {"accuracy": 1.0, "macro_f1": 1.0, "ece": 0.0, "per_class": {
        name: {"precision": 1.0, "recall": 1.0, "f1": 1.0} for name in hostile}}
    names = flat_metrics(metrics)
    assert len(names) == 3 + 3 * len(hostile)
    for name in names:
        _validate_metric_name(name)


def test_weights_files_follow_the_umask_like_every_output(tmp_path):
    """safetensors replaces the file it writes, and took mkstemp's private 0600 with it."""
    import torch
    from safetensors.torch import save_file

    from tlpipe.fsio import write_atomic

    umask = os.umask(0o022)
    os.umask(umask)
    target = write_atomic(tmp_path / "head.safetensors",
                          lambda path: save_file({"w": torch.zeros(2)}, str(path)))
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def _unwritable_dir() -> Path | None:
    """A folder that cannot be made even by root: under /sys, read-only in containers."""
    probe = Path("/sys/fs/tlpipe-probe")
    try:
        probe.mkdir()
    except OSError as error:
        return probe if error.errno in (errno.EPERM, errno.EROFS, errno.EACCES) else None
    probe.rmdir()
    return None


@pytest.mark.skipif(_unwritable_dir() is None, reason="no unwritable folder to point at here "
                                                      "(tests run as root outside a container)")
def test_an_unwritable_runs_folder_is_a_message_naming_it(tmp_path, small_data, prefect_harness):
    project = make_project(tmp_path / "project", small_data)
    runs = _unwritable_dir() / "runs"
    result = subprocess.run(  # the harness's Prefect server: no temporary one to start
        [sys.executable, "-m", "tlpipe.cli.main", "run", "--set", f"runs_dir={runs}"],
        cwd=project, env=harness_env(),
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "tlpipe-probe" in result.stderr and "make it writable" in result.stderr
    assert "runs_dir" in result.stderr and "Traceback" not in result.stderr
    assert "Retry" not in result.stdout + result.stderr  # retrying cannot make it writable


def test_an_absent_prefect_api_fails_the_command_in_seconds_naming_it(tmp_path, small_data):
    project = make_project(tmp_path / "project", small_data)
    api = f"http://127.0.0.1:{free_port()}/api"
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "tlpipe.cli.main", "run"], cwd=project,
                            env={**cli_env(), "PREFECT_API_URL": api}, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"the Prefect API {api} (PREFECT_API_URL) does not answer" in result.stderr
    assert "Traceback" not in result.stderr and time.monotonic() - started < 60


def test_an_absent_tracking_database_fails_in_seconds_without_its_password(tmp_path):
    from tlpipe.config import TrackingConfig
    from tlpipe.ops.tracking import TrackingUnavailable, configure

    port = free_port()
    uri = f"postgresql://tlpipe:s3cret@127.0.0.1:{port}/mlflow"
    with pytest.raises(TrackingUnavailable) as refused:
        configure(TrackingConfig(tracking_uri=uri), tmp_path)
    assert f"the MLflow database postgresql://127.0.0.1:{port} does not answer" in str(
        refused.value)
    assert "s3cret" not in str(refused.value)
