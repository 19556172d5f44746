"""The audit on real images with planted problems, in a copy of the demo data built here.

Planted: 5% of the training images moved to the other class's folder (flipped labels), a
resized and re-encoded copy of a test image put into train (a leak the exact-hash check cannot
see), the demo's "image not found" GIF (allowed through the file gate here, as a placeholder
saved as a JPEG would be) and pictures of an unrelated kind. The real backbone makes the
features, cleanlab finds the label issues, FAISS the neighbours.
"""

from __future__ import annotations

import json
import re
import shutil
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.conftest import copy_slice, make_project
from tests.images import shape, stable_seed
from tlpipe.audit.findings import AuditFailed
from tlpipe.data.quarantine import without_quarantined
from tlpipe.params_file import load_params
from tlpipe.paths import outputs_for
from tlpipe.stages import audit, features, head, manifest, validate

LEAK = "train/bees/copy_of_a_test_bee.jpg"
UNRELATED = [f"train/ants/unrelated_{i}.png" for i in range(2)] + [
    f"val/bees/unrelated_{i}.png" for i in range(2, 4)]
GIF = "train/ants/imageNotFound.gif"


@pytest.fixture(scope="module")
def planted(tmp_path_factory, demo_root):
    base = tmp_path_factory.mktemp("audit")
    root = copy_slice(base / "data", {"train": 1000, "val": 1000})
    shutil.copy2(demo_root / GIF, root / GIF)
    rng = np.random.default_rng(7)
    train_images = sorted((root / "train").rglob("*.jpg"))
    flipped = {}
    for index in rng.choice(len(train_images), round(0.05 * len(train_images)), replace=False):
        source = train_images[index]
        other = "bees" if source.parent.name == "ants" else "ants"
        target = root / "train" / other / source.name
        source.rename(target)
        flipped[str(target.relative_to(root))] = source.parent.name
    original = sorted((root / "val" / "bees").glob("*.jpg"))[0]
    with Image.open(original) as image:
        smaller = image.convert("RGB").resize((image.width * 9 // 10, image.height * 9 // 10))
        smaller.save(root / LEAK, quality=80)
    for index, path in enumerate(UNRELATED):
        picture = shape("stripes" if index % 2 else "disc", stable_seed("unrelated", index),
                        (240, 180))
        picture.save(root / path)
    project = make_project(base / "project", root, {
        "validation": {"allowed_formats": ["JPEG", "PNG", "GIF"], "quarantine": []},
        "features": {"views": 0},  # the audit reads plain views only
        "head": {"candidates": ["logistic"], "logistic_c": [0.1], "train_views": ["plain"]}})
    params = load_params(project / "params.yaml")
    for stage in (manifest, validate):
        stage.compute(params, project)
    features.compute(params, project)
    summary = audit.compute(params, project)
    out = outputs_for(params, project)
    found = pd.DataFrame(json.loads(out.audit_findings.read_text()))
    return SimpleNamespace(root=root, project=project, params=params, out=out, summary=summary,
                           findings=found, flipped=flipped,
                           leaked_from=str(original.relative_to(root)))


def test_flipped_labels_are_found_with_the_class_they_came_from(planted):
    issues = planted.findings[planted.findings["finding"] == "label_issue"]
    flagged = set(issues["path"])
    found = flagged & set(planted.flipped)
    recall, precision = len(found) / len(planted.flipped), len(found) / len(flagged)
    ranked = issues["path"].tolist()  # most suspect first
    top = set(ranked[:2 * len(planted.flipped)]) & set(planted.flipped)
    print(f"label issues: {len(flagged)} flagged of {planted.summary['images']} images; "
          f"{len(found)} of {len(planted.flipped)} flipped found: recall {recall:.2f}, "
          f"precision {precision:.2f}; in the top {2 * len(planted.flipped)}: {len(top)}")
    assert recall >= 0.8 and len(top) >= 0.8 * len(planted.flipped)
    suggested = issues.set_index("path")["suggested"]
    assert all(suggested[path] == planted.flipped[path] for path in found)


def test_a_resized_re_encoded_test_image_in_train_is_a_leak_kept_out_of_training(planted):
    leaks = planted.findings[planted.findings["finding"] == "leak"].set_index("path")
    assert LEAK in leaks.index, planted.findings
    leak = leaks.loc[LEAK]
    assert leak["neighbour"] == planted.leaked_from and leak["neighbour_split"] == "test"
    assert leak["similarity"] >= planted.summary["near_copy_similarity"]
    assert leak["verdict"] == "quarantine" and leak["quarantined"]
    quarantined = json.loads(planted.out.quarantine.read_text())
    assert [entry["path"] for entry in quarantined] == [LEAK]
    # The head reads the plan through the quarantine: the copy is not among its images.
    plan = pd.read_parquet(planted.out.plan)
    assert LEAK in set(plan["path"])
    assert LEAK not in set(without_quarantined(plan, planted.out.quarantine)["path"])
    head.compute(planted.params, planted.project)
    counted = json.loads(planted.out.head_spec.read_text())["images"]
    in_plan = plan[plan["view"] == 0]["split"].value_counts()
    leak_split = plan.set_index("path").loc[LEAK, "split"]
    assert counted[leak_split] == in_plan[leak_split] - 1
    audited = pd.read_parquet(planted.out.audited_images).set_index("path")["trained"]
    assert not audited[LEAK] and audited[GIF]  # drift's reference: what training used


def test_the_placeholder_gif_and_unrelated_pictures_are_outliers(planted):
    outliers = planted.findings[planted.findings["finding"] == "outlier"]
    print("outliers:", outliers[["path", "score"]].to_string(index=False))
    assert {GIF, *UNRELATED} <= set(outliers["path"])
    assert not outliers["quarantined"].any()  # reported, by default


def test_the_report_is_one_page_that_needs_no_network(planted):
    page = planted.out.audit_report.read_text()
    assert LEAK in page and GIF in page and "Label issues" in page
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert page.count('src="data:image/jpeg;base64,') >= 2 * len(planted.findings.head(40))
    assert 'src="data:image/png;base64,' in page  # the map
    assert planted.out.audit_map.stat().st_size > 10_000


def test_a_fail_verdict_stops_before_training_and_names_the_image(planted):
    strict = planted.params.model_copy(update={"audit": planted.params.audit.model_copy(
        update={"leaks": "fail"})})
    with pytest.raises(AuditFailed, match=r"audit\.leaks is fail.*copy_of_a_test_bee"):
        audit.compute(strict, planted.project)
    assert not planted.out.quarantine.exists() and not planted.out.audited_images.exists()
    assert planted.out.audit_report.is_file()
    audit.compute(planted.params, planted.project)  # back to the default for other tests


def test_near_copies_are_sorted_into_leaks_conflicts_and_harmless_duplicates():
    """On made-up vectors: each kind of near-copy pair, and a pair that is two kinds at once."""
    from tlpipe.audit.findings import audit_embeddings
    from tlpipe.config import AuditConfig

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(40, 64)).astype(np.float32)
    images = pd.DataFrame({"path": [f"{i}.jpg" for i in range(40)],
                           "label": ["ants", "bees"] * 20,
                           "split": (["train"] * 3 + ["val"]) * 8 + ["test"] * 8})
    # A test bee copies a train ant, a test bee a train bee, a val bee a train ant, a train
    # bee a train ant; two train ants are copies.
    copy_of = {33: 0, 35: 1, 3: 2, 5: 8, 4: 6}
    for copy, original in copy_of.items():
        vectors[copy] = vectors[original] + rng.normal(0, 0.01, 64)
    result = audit_embeddings(images, vectors, AuditConfig(), seed=0)
    found = {(int(path[:-4]), kind) for path, kind in
             result.findings[["path", "finding"]].itertuples(index=False)
             if kind in ("leak", "conflict")}
    assert found == {(0, "leak"), (0, "conflict"), (33, "conflict"), (1, "leak"),
                     (2, "leak"), (2, "conflict"), (3, "conflict"), (5, "conflict"),
                     (8, "conflict")}
    assert result.duplicates_within_class == 1
    assert set(result.quarantined["path"]) == {"0.jpg", "1.jpg", "2.jpg"}  # the less held-out


def test_the_approximate_index_finds_what_exact_search_finds():
    """Past ``exact_max`` the IVF index answers; on clustered vectors with planted copies it
    finds each copy and nearly every true nearest neighbour, and never returns a row itself."""
    from tlpipe.audit.neighbours import nearest

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 32))
    vectors = (centres[rng.integers(0, 20, 3000)] + rng.normal(0, 0.5, (3000, 32))).astype(
        np.float32)
    vectors[2900:] = vectors[:100] + rng.normal(0, 0.01, (100, 32)).astype(np.float32)
    exact_similarities, exact = nearest(vectors, 3, exact_max=10_000)
    similarities, approximate = nearest(vectors, 3, exact_max=1000)
    assert approximate.shape == (3000, 3)
    assert not (approximate == np.arange(3000)[:, None]).any()
    assert (approximate[:, 0] == exact[:, 0]).mean() >= 0.95
    assert (approximate[:100, 0] == np.arange(2900, 3000)).all()
    assert np.allclose(similarities[:100, 0], exact_similarities[:100, 0], atol=1e-5)


def test_a_correctly_labelled_rare_class_is_not_called_mislabelled():
    """Three classes, 16:4:1, correctly labelled but for 12 common images filed under the
    middle class. A probe that learns the priors pushes the rare class's images towards the
    common ones (10 of its 25 were flagged before the probe weighted classes evenly); the
    balanced probe flags at most two of them, and still finds every planted error."""
    from tlpipe.audit.findings import label_issues
    from tlpipe.config import AuditConfig

    rng = np.random.default_rng(0)
    sizes = [400, 100, 25]
    centres = rng.normal(0, 1, (3, 64)) * 0.5
    vectors = np.vstack([rng.normal(centre, 1.0, (n, 64))
                         for centre, n in zip(centres, sizes, strict=True)])
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    labels = np.repeat([0, 1, 2], sizes)
    planted = rng.choice(400, 12, replace=False)
    labels[planted] = 1
    issues = label_issues(unit, labels, ["common", "middling", "rare"], AuditConfig(), 0)
    flagged = issues["row"].to_numpy()
    assert set(planted) <= set(flagged)
    assert (labels[flagged] == 2).sum() <= 2
    assert set(issues.loc[issues["row"].isin(planted), "suggested"]) == {"common"}
