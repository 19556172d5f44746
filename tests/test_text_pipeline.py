"""Texts, through the same pipeline as images: a folder of .txt files by class to a registered,
promoted champion with `tlpipe init` and `tlpipe run` (real encoder, Prefect, MLflow, DVC and
Great Expectations), answering on strings through `tlpipe predict`, `tlpipe.load` and the
pyfunc; `tlpipe reproduce` rebuilds it and `tlpipe retrain` retrains on new texts. Bad texts
are messages naming the file, and nothing is registered."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import REPO, harness_env
from tests.images import write_shapes
from tlpipe.config import Params
from tlpipe.data.scan import check_folder, scan
from tlpipe.data.text_facts import MixedDataError, TextTableError
from tlpipe.vectors.text_augment import augmented_text

TLPIPE = str(Path(sys.executable).parent / "tlpipe")
QUOTES = (REPO / ".." / "shared" / "datasets" / "quotes-topics").resolve()
# Three topics under other names, 26 texts each (the first by name: a fixed sample), and 8
# more per topic kept back for the retrain.
TOPICS = {"food": "food & drink", "law": "law", "love": "love letters"}
PER_CLASS, LATER = 26, 8
pytestmark = [pytest.mark.usefixtures("prefect_harness"),
              pytest.mark.skipif(not QUOTES.is_dir(), reason=f"{QUOTES} is not here")]


def tlpipe(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([TLPIPE, *args], cwd=cwd, env=harness_env(), input=stdin,
                          capture_output=True, text=True, timeout=600)


def copy_topics(target: Path, start: int, count: int) -> Path:
    for topic, name in TOPICS.items():
        (target / name).mkdir(parents=True, exist_ok=True)
        for file in sorted((QUOTES / topic).glob("*.txt"))[start:start + count]:
            shutil.copyfile(file, target / name / file.name)
    return target


def store(project: Path) -> MlflowClient:
    uri = f"sqlite:///{project / 'mlflow' / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@pytest.fixture(scope="module")
def topics(tmp_path_factory):
    base = tmp_path_factory.mktemp("texts")
    data = copy_topics(base / "Quote Topics", 0, PER_CLASS)
    made = tlpipe("init", str(base / "project"), "--data", str(data), cwd=base)
    assert made.returncode == 0, made.stdout + made.stderr
    project = base / "project"
    run = tlpipe("run", cwd=project)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return project, run


def test_a_text_folder_becomes_a_promoted_champion_named_after_it(topics):
    project, run = topics
    assert "quote-topics v1: PROMOTED" in run.stdout
    assert "small test split: 20 test texts" in run.stdout  # a few per class: the gate warns
    # Fine-tuned (the top 2 of its 6 layers, with the head), and kept only if it helps.
    assert re.search(r"Fine-tuning (not )?kept: top 2 of 6 layers", run.stdout), run.stdout
    # It starts where the head is: no epoch far worse than chance (log 3 = 1.1) on its texts.
    history = json.loads(next((project / "runs").glob("*/finetune/history.json")).read_text())
    assert history["epochs"] and max(e["train_loss"] for e in history["epochs"]) < 1.5, history
    champion = store(project).get_model_version_by_alias("quote-topics", "champion")
    assert "Classifies texts into the classes above" in champion.description
    metrics = json.loads(next((project / "runs").glob("*/evaluate/metrics.json")).read_text())
    assert metrics["classes"] == sorted(TOPICS.values())
    assert metrics["macro_f1"] > 0.7  # three topics a sentence encoder tells apart
    mistakes = next((project / "runs").glob("*/evaluate/mistakes.html")).read_text()
    assert "<img" not in mistakes and ("blockquote" in mistakes or "No mistakes" in mistakes)


def test_the_champion_answers_on_strings_alike_through_the_cli_load_and_pyfunc(topics, tmp_path):
    project, _ = topics
    texts = ["The jury found the defendant guilty of fraud.",
             "Add the butter and flour, then bake for twenty minutes.",
             "I have loved you since the first day we met, my darling."]
    table = tmp_path / "to classify.csv"
    pd.DataFrame({"id": [1, 2, 3], "text": texts}).to_csv(table, index=False)
    one_file = tmp_path / "verdict.txt"
    one_file.write_text(texts[0] + "\n")
    cli = tlpipe("predict", str(table), str(one_file), "-", "--out", str(tmp_path / "out.csv"),
                 cwd=project, stdin="\n".join(texts) + "\n")
    assert cli.returncode == 0, cli.stdout + cli.stderr
    answered = pd.read_csv(tmp_path / "out.csv")
    assert answered["path"].tolist() == [f"{table}:2", f"{table}:3", f"{table}:4", str(one_file),
                                         "stdin:1", "stdin:2", "stdin:3"]
    labels = answered["label"].tolist()
    assert labels[:3] == ["law", "food & drink", "love letters"] == labels[4:]
    assert labels[3] == "law"

    import tlpipe as library

    model = library.load("quote-topics@champion", project=project)
    loaded = model.predict(texts)
    assert loaded["label"].tolist() == answered["label"].tolist()[:3]
    columns = [f"prob_{name}" for name in model.classes]
    assert np.abs(loaded[columns].to_numpy() - answered[columns].to_numpy()[:3]).max() < 1e-5
    served = model._pyfunc.predict(pd.DataFrame({"text": texts}))
    assert served["label"].tolist() == loaded["label"].tolist()
    assert model._pyfunc.predict(texts)["label"].tolist() == loaded["label"].tolist()
    assert model._pyfunc.predict(texts[0])["label"].tolist() == loaded["label"].tolist()[:1]
    with pytest.raises(Exception, match="row 1: expected a string, got int"):
        model._pyfunc.predict(["fine", 3])


def test_the_onnx_export_with_its_tokenizer_answers_as_the_champion(topics, tmp_path):
    import onnxruntime
    from tokenizers import Tokenizer

    import tlpipe as library

    project, _ = topics
    target = tmp_path / "topics.onnx"
    made = tlpipe("export", "models:/quote-topics@champion", "--out", str(target), cwd=project)
    assert made.returncode == 0, made.stdout + made.stderr
    assert "(8 from the data)" in made.stdout
    metadata = json.loads((tmp_path / "topics.onnx.json").read_text())
    assert metadata["classes"] == sorted(TOPICS.values())
    # What a user of the files does: their tokenizer, then the graph, on texts of any length.
    texts = ["Objection, your honour: the witness is leading.", "Stir the soup. " * 200,
             "Every letter I write you ends with a kiss."]
    tokens = Tokenizer.from_file(str(tmp_path / metadata["tokenizer"])).encode_batch(texts)
    session = onnxruntime.InferenceSession(str(target))
    probabilities, labels = session.run(None, {
        "input_ids": np.array([t.ids for t in tokens]),
        "attention_mask": np.array([t.attention_mask for t in tokens])})
    answers = library.load("quote-topics@champion", project=project).predict(texts)
    columns = [f"prob_{name}" for name in metadata["classes"]]
    assert np.abs(probabilities - answers[columns].to_numpy()).max() < 1e-4
    assert [metadata["classes"][i] for i in labels] == answers["label"].tolist()


def test_bad_texts_are_named_and_nothing_is_registered(topics, tmp_path):
    project, _ = topics
    bad = copy_topics(tmp_path / "bad", PER_CLASS, 8)
    law = bad / "law"
    (law / "archive.txt").write_bytes(b"PK\x03\x04\x14\x00\x00\x00binary")
    (law / "latin1.txt").write_bytes("Caf\xe9 du palais de justice".encode("latin-1"))
    (law / "empty.txt").write_bytes(b"")
    (law / "huge.txt").write_text("word " * 2_100_000)  # 10.5 MB
    params = Params.model_validate({"registry": {"model_name": "x"}})
    report, _ = check_folder(bad, params)
    (decodable,) = [o for o in report.failures if o.rule == "decodable"]
    reasons = {o["path"]: o["detail"] for o in decodable.offenders}
    assert set(reasons) == {f"law/{name}" for name in ("archive.txt", "latin1.txt", "empty.txt",
                                                       "huge.txt")}
    assert "control character" in reasons["law/archive.txt"]
    assert "not UTF-8" in reasons["law/latin1.txt"] and "Latin-1" in reasons["law/latin1.txt"]
    assert "empty" in reasons["law/empty.txt"] and "text.max_bytes" in reasons["law/huge.txt"]
    client = store(project)
    versions = client.search_model_versions("name = 'quote-topics'")
    failed = tlpipe("run", "--data", str(bad), cwd=project)
    assert failed.returncode == 1 and "Traceback" not in failed.stdout + failed.stderr
    assert "law/latin1.txt" in failed.stderr and "law/archive.txt" in failed.stderr
    assert client.search_model_versions("name = 'quote-topics'") == versions

    write_shapes(bad / "law", per_class=1, kinds=("disc",))
    with pytest.raises(MixedDataError, match=r"images \(first: law/disc/.*texts \(first: "):
        scan(bad, params.data, params.split, 1000, params.text)
    table = tmp_path / "labelled.csv"
    table.write_text("text,label\nThe court adjourned.,law\nBread rises.,\n")
    with pytest.raises(TextTableError, match=r"labelled\.csv, line 3: the 'label' column is "
                                             r"empty"):
        scan(table, params.data, params.split, 1000, params.text)


def test_a_jsonl_table_is_data_too_with_a_stable_split_and_near_copies_caught(tmp_path):
    rows = [{"body": f"Text number {i} about {topic}.", "topic": topic}
            for topic in ("a", "b") for i in range(12)]
    rows.append({"body": "TEXT number 0, about a!", "topic": "b"})  # a near-copy, other class
    table = tmp_path / "tickets.jsonl"
    table.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    params = Params.model_validate({"registry": {"model_name": "x"}, "data": {
        "text_column": "body", "label_column": "topic"}})
    manifest = scan(table, params.data, params.split, 1000, params.text)
    assert manifest.attrs["modality"] == "text" and manifest.attrs["classes"] == ["a", "b"]
    assert manifest["path"].iloc[0] == "tickets.jsonl:1"
    again = scan(table, params.data, params.split, 1000, params.text)
    assert manifest["split"].tolist() == again["split"].tolist()
    report, _ = check_folder(table, params)
    (near,) = [o for o in report.outcomes if o.rule == "near_duplicates"]
    assert {o["path"] for o in near.offenders} == {"tickets.jsonl:1", "tickets.jsonl:25"}


def test_augmented_views_are_fixed_by_text_view_and_seed_and_never_empty():
    text = "The court sat at noon. The judge was tired! Everyone went home early to rest."
    first = augmented_text(text, "ab" * 32, 1, 42, 0.1)
    assert first == augmented_text(text, "ab" * 32, 1, 42, 0.1) != text
    assert first != augmented_text(text, "ab" * 32, 2, 42, 0.1)
    assert augmented_text("alone", "cd" * 32, 1, 42, 0.99) == "alone"
    assert set(augmented_text(text, "ab" * 32, 3, 7, 0.1).split()) <= set(text.split())


def test_retrain_takes_new_texts_and_reproduce_rebuilds_the_champion(topics):
    project, _ = topics
    copy_topics(project / yaml.safe_load((project / "params.yaml").read_text())["data"]["root"],
                PER_CLASS, LATER)
    retrained = tlpipe("retrain", cwd=project)
    # v2 is trained on the new texts either way; the gate decides whether it is promoted
    # (exit code 1 when it is refused, as for images).
    assert retrained.returncode in (0, 1), retrained.stdout[-3000:] + retrained.stderr[-3000:]
    # Drift measured on the new texts' embeddings against the champion's training texts.
    assert f"{LATER * len(TOPICS)} new text(s) " in retrained.stdout
    assert "registered quote-topics version 2" in retrained.stdout + retrained.stderr
    rebuilt = tlpipe("reproduce", "models:/quote-topics@challenger", cwd=project)
    assert rebuilt.returncode == 0, rebuilt.stdout[-3000:] + rebuilt.stderr[-3000:]
    assert "MATCH: models:/quote-topics@challenger" in rebuilt.stdout


def test_init_makes_a_project_around_a_table_of_texts(tmp_path):
    from tlpipe.errors import SettingsError
    from tlpipe.ops.project import init_project
    from tlpipe.params_file import load_params

    rows = [{"text": f"Ticket {i}: the {kind} does not work after the update", "label": kind}
            for kind in ("printer", "laptop") for i in range(15)]
    table = tmp_path / "Support Tickets.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    made = init_project(tmp_path / "project", table)
    assert made.model_name == "support-tickets" and made.classes == ["laptop", "printer"]
    params = load_params(tmp_path / "project" / "params.yaml")
    assert params.data.root == Path("data/raw/support-tickets.csv")
    report, kept = check_folder(tmp_path / "project" / params.data.root, params)
    assert report.passed and len(kept) == 30
    (tmp_path / "no labels.csv").write_text("text,topic\nhello,greeting\n")
    with pytest.raises(SettingsError, match=r"--data: .*no labels\.csv, line 2: no column "
                                            r"'label'.*data\.label_column"):
        init_project(tmp_path / "other", tmp_path / "no labels.csv")
