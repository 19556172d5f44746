"""A stranger's folder of images to a registered champion, through the installed CLI:
`tlpipe init`, then `tlpipe run` in the new project, each a subprocess of its own. The
folder has three imbalanced classes (6:3:1), and the champion answers the same through
`tlpipe predict`, `tlpipe.load`, the served pyfunc and its ONNX export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import REPO, cli_env, harness_env, onnx_probabilities
from tests.images import write_shapes
from tlpipe.ops.project import COPY_LIMIT_BYTES, init_project

TLPIPE = str(Path(sys.executable).parent / "tlpipe")
CLASSES = {"disc": "red disc", "square": "blue square", "stripes": "striped tile"}
COUNTS = {"disc": 60, "square": 30, "stripes": 10}  # "striped tile" is the rare class
# What a user edits after `tlpipe init` to make runs quick: two rungs of the ladder, no
# fine-tuning (tests/test_flow.py and tests/test_recipe.py cover those).
QUICK = {"head": {"candidates": ["logistic", "knn"]}, "finetune": {"epochs": 0}}


# The session's Prefect server, not one per command: tests/test_processes.py covers the
# temporary server a lone `tlpipe run` starts.
pytestmark = pytest.mark.usefixtures("prefect_harness")


def tlpipe(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([TLPIPE, *args], cwd=cwd, env=harness_env(),
                          capture_output=True, text=True, timeout=600)


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                          check=True).stdout


def store(project: Path) -> MlflowClient:
    uri = f"sqlite:///{project / 'mlflow' / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def features_runs(client: MlflowClient, parent_run_id: str) -> list:
    experiment = client.get_run(parent_run_id).info.experiment_id
    return client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent_run_id}' "
                                            "and tags.`tlpipe.stage` = 'features'")


@pytest.fixture(scope="module")
def pets(tmp_path_factory):
    """`tlpipe init` on "My Pets" (three imbalanced classes, names with spaces), then two
    `tlpipe run`."""
    base = tmp_path_factory.mktemp("stranger")
    data = base / "photos" / "My Pets"
    for kind, count in COUNTS.items():
        write_shapes(data, per_class=count, kinds=(kind,))
    for kind, name in CLASSES.items():
        (data / kind).rename(data / name)
    checkout_before = git("status", "--porcelain", cwd=REPO)
    made = tlpipe("init", str(base / "pets-project"), "--data", str(data), cwd=base)
    assert made.returncode == 0, made.stdout + made.stderr
    project = base / "pets-project"
    params = yaml.safe_load((project / "params.yaml").read_text())
    for section, values in QUICK.items():
        params[section].update(values)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qam", "quick",
        cwd=project)
    runs = [tlpipe("run", cwd=project) for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return project, data, made, runs, checkout_before


def test_init_makes_a_committed_project_around_the_data(pets):
    project, data, made, _, _ = pets
    assert "hard-linked" in made.stdout and "cd " in made.stdout
    params = yaml.safe_load(git("show", "HEAD~1:params.yaml", cwd=project))
    assert params["registry"]["model_name"] == "my-pets"
    assert params["data"] == {"root": "data/raw/my-pets",
                              "expected_classes": sorted(CLASSES.values()),
                              "ignored_names": [".DS_Store", "Thumbs.db", "desktop.ini",
                                                "__MACOSX"],
                              "state_dir": ".cache/manifest", "modality": "auto",
                              "text_column": "text", "label_column": "label"}
    assert git("ls-files", cwd=project).split() == [
        ".dvc/.gitignore", ".dvc/config", ".dvcignore", ".gitignore", "README.md",
        "data/raw/.gitignore", "data/raw/my-pets.dvc", "dvc.yaml", "params.yaml",
        "plots/confusion_counts.json", "plots/epochs.json", "prefect.yaml"]
    assert "analytics = false" in (project / ".dvc" / "config").read_text()
    image = next((data / "red disc").iterdir())
    linked = project / "data" / "raw" / "my-pets" / "red disc" / image.name
    assert linked.stat().st_ino == image.stat().st_ino  # no bytes copied


def test_run_registers_a_champion_named_after_the_folder_in_the_projects_own_store(pets):
    project, _, _, runs, _ = pets
    client = store(project)
    assert str(client.get_model_version_by_alias("my-pets", "champion").version) == "1"
    model = client.get_registered_model("my-pets")
    assert json.loads(model.tags["tlpipe.classes"]) == sorted(CLASSES.values())
    assert "Registered my-pets version 1" in runs[0].stdout and "PROMOTED" in runs[0].stdout
    assert (project / "runs").is_dir() and not (project / "outputs").exists()


def test_the_audit_does_not_call_the_rare_class_mislabelled(pets):
    project, *_ = pets
    findings = json.loads(next(project.glob("runs/*/audit/findings.json")).read_text())
    rare = [f for f in findings if f["finding"] == "label_issue" and f["label"] == "striped tile"]
    assert len(rare) <= 2, rare  # of 10 correctly labelled images


def test_the_champion_answers_alike_in_predict_load_the_served_pyfunc_and_onnx(pets, tmp_path):
    import base64

    import numpy as np
    import pandas as pd

    from tlpipe.api import load
    from tlpipe.vectors.images import load_rgb

    project, data, *_ = pets
    files = sorted(data.rglob("*_[0-4].*"))  # every class, PNG and JPEG, several sizes
    predicted = tlpipe("predict", *map(str, files), "--out",
                       str(tmp_path / "predictions.csv"), cwd=project)
    assert predicted.returncode == 0, predicted.stdout + predicted.stderr
    cli = pd.read_csv(tmp_path / "predictions.csv").set_index("path")
    model = load("my-pets@champion", project=project)
    columns = [f"prob_{name}" for name in model.classes]
    loaded = model.predict(files).set_index("path")
    # The served model receives base64 text in JSON: the pyfunc's own input, as a server has it.
    served = model._pyfunc.predict(pd.DataFrame(
        {"image": [base64.b64encode(path.read_bytes()).decode() for path in files]}))
    exported = tlpipe("export", "models:/my-pets@champion", "--out", str(tmp_path / "m.onnx"),
                      cwd=project)
    assert exported.returncode == 0, exported.stdout + exported.stderr
    onnx = onnx_probabilities(tmp_path / "m.onnx", [load_rgb(path) for path in files])
    keys = [str(path) for path in files]
    reference = loaded.loc[keys, columns].to_numpy()
    for other in (cli.loc[keys, columns].to_numpy(), served[columns].to_numpy(), onnx):
        assert np.abs(other - reference).max() < 5e-3
        assert (other.argmax(axis=1) == reference.argmax(axis=1)).all()
    assert cli.loc[keys, "label"].tolist() == loaded.loc[keys, "label"].tolist() \
        == served["label"].tolist()
    rare = [str(path) for path in files if path.parent.name == "striped tile"]
    assert (loaded.loc[rare, "label"] == "striped tile").all()


def test_runs_leave_both_work_trees_clean_and_reuse_the_feature_cache(pets):
    project, _, _, runs, checkout_before = pets
    assert git("status", "--porcelain", cwd=REPO) == checkout_before
    assert git("status", "--porcelain", cwd=project) == ""
    client = store(project)
    ids = [line.rsplit("MLflow run ", 1)[1].split(".")[0] for run in runs
           for line in run.stdout.splitlines() if "MLflow run " in line and "Registered" in line]
    first, second = (features_runs(client, run_id)[0].data.metrics for run_id in ids)
    assert first["computed"] > 0 and second["computed"] == 0
    # Every view of the plan came from the store: those the first run computed, and those it
    # found there already (computed moments before to choose the preprocessing, eval_resize).
    assert second["cached"] == first["computed"] + first["cached"]
    assert client.get_run(ids[1]).data.tags["git_dirty"] == "false"


def test_reproduce_rebuilds_the_champion_in_a_new_project_and_leaves_dvc_status_clean(pets):
    """A new project's commit has no dvc.lock: `tlpipe reproduce` checks out the data alone,
    runs every installed stage with `dvc repro` (the stages shown as they start) and gets the
    registered model's metrics back exactly."""
    project, *_ = pets
    rebuilt = tlpipe("reproduce", "models:/my-pets@champion", "--keep", cwd=project)
    assert rebuilt.returncode == 0, rebuilt.stdout[-3000:] + rebuilt.stderr[-3000:]
    assert "MATCH: models:/my-pets@champion" in rebuilt.stdout
    assert "has no dvc.lock: every stage was rebuilt" in rebuilt.stdout
    assert "dvc: Running stage 'features'" in rebuilt.stdout
    worktree = Path(rebuilt.stdout.split("worktree kept at ")[1].split()[0])
    try:
        status = subprocess.run([sys.executable, "-m", "dvc", "status"], cwd=worktree,
                                env=cli_env(project / ".prefect"), capture_output=True,
                                text=True, check=True).stdout
        assert "up to date" in status, status
    finally:
        git("worktree", "remove", "--force", str(worktree), cwd=project)


def test_other_classes_under_the_same_model_name_are_refused_before_any_feature(pets, tmp_path):
    project, *_ = pets
    client = store(project)
    versions = client.search_model_versions("name = 'my-pets'")
    other = write_shapes(tmp_path / "cats and dogs", per_class=8, kinds=("disc", "square"))
    refused = tlpipe("run", "--data", str(other), "--set", "data.expected_classes=null",
                     cwd=project)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "['blue square', 'red disc', 'striped tile']" in refused.stderr
    assert "['disc', 'square']" in refused.stderr and "tlpipe init" in refused.stderr
    assert "Traceback" not in refused.stdout + refused.stderr
    assert client.search_model_versions("name = 'my-pets'") == versions  # nothing registered
    failed = client.search_runs(
        [client.get_experiment_by_name("tlpipe").experiment_id],
        "attributes.status = 'FAILED' and tags.`tlpipe.kind` = 'pipeline'")
    assert len(failed) == 1
    assert features_runs(client, failed[0].info.run_id) == []
    assert "classes" in failed[0].data.tags["failure_reason"]


def test_a_failed_validation_is_a_message_and_a_traceback_only_with_verbose(pets):
    project, *_ = pets
    quiet = tlpipe("run", "--set", "validation.min_side=500", cwd=project)
    assert quiet.returncode == 1
    assert "Traceback" not in quiet.stdout + quiet.stderr
    assert "min_side" in quiet.stderr and "report.html" in quiet.stderr
    loud = tlpipe("--verbose", "run", "--set", "validation.min_side=500", cwd=project)
    assert loud.returncode == 1 and "Traceback" in loud.stdout + loud.stderr


def test_init_refuses_a_folder_that_is_not_empty_and_data_without_class_folders(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    (tmp_path / "flat").mkdir()
    from tlpipe.errors import SettingsError, TlpipeError

    with pytest.raises(SettingsError, match="not an empty folder"):
        init_project(tmp_path / "taken", None)
    with pytest.raises(TlpipeError, match=r"no class folders found in .*flat"):
        init_project(tmp_path / "new", tmp_path / "flat")
    with pytest.raises(SettingsError, match=r"--data: .*notes\.txt is not a folder"):
        init_project(tmp_path / "new", tmp_path / "taken" / "notes.txt")  # exit code 2
    assert not (tmp_path / "new").exists()
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"


def test_init_writes_an_imbalance_limit_the_data_passes_and_says_what_will_fail(tmp_path):
    """A 13x imbalance under the default limit of 10 failed the first run of a new project."""
    from tlpipe.data.scan import check_folder
    from tlpipe.params_file import load_params

    data = write_shapes(tmp_path / "shapes", per_class=40, kinds=("disc",))
    write_shapes(data, per_class=3, kinds=("square",))
    made = init_project(tmp_path / "project", data)
    imbalance, few = made.notes
    assert "imbalanced 13.3x (disc: 40 images, square: 3)" in imbalance
    assert "max_class_imbalance is written as 14 (default 10)" in imbalance
    assert few.startswith("square (3): fewer images than validation.min_images_per_class (5)")
    params = load_params(tmp_path / "project" / "params.yaml")
    assert params.validation.max_class_imbalance == 14.0
    report, _ = check_folder(tmp_path / "project" / made.data, params)
    failed = {outcome.rule for outcome in report.failures}
    assert "class_imbalance" not in failed and "min_images_per_class" in failed  # as init said


def test_a_copy_is_a_copy(tmp_path):
    data = write_shapes(tmp_path / "shapes", per_class=2)
    made = init_project(tmp_path / "project", data, copy=True)
    assert made.placed == "copied" and COPY_LIMIT_BYTES > 0
    image = next((data / "disc").iterdir())
    copied = tmp_path / "project" / made.data / "disc" / image.name
    assert copied.read_bytes() == image.read_bytes()
    assert copied.stat().st_ino != image.stat().st_ino
    assert os.access(image, os.W_OK)  # the user's own files are left as they were


def test_the_wheel_carries_what_init_writes_and_the_flows(tmp_path):
    """An installed tlpipe, not only this checkout, can make a project and run its stages."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(tmp_path), str(REPO)],
                   check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = tmp_path.glob("tlpipe-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    from tlpipe.ops.project import TEMPLATE_FILES

    assert {f"tlpipe/templates/{name}.tmpl" for name in TEMPLATE_FILES} <= names
    assert {"tlpipe/ops/dvc_stage.py", "tlpipe/flows/retrain.py", "tlpipe/tasks/stages.py"} <= names
    # One importable top-level package: no `flows` or `tasks` to collide in site-packages.
    assert {name.split("/")[0] for name in names if "dist-info" not in name} == {"tlpipe"}
