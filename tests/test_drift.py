"""Drift of new images from the champion's training images, and ``retrain.trigger: drift``.

The kernel test on its own (vectors from known distributions), then the retrain flow on a real
DVC project with the real training flow: near-copies of the champion's own training images are
no drift and, under ``trigger: drift``, no retrain; pictures of another kind are drift and do
retrain. The outcome reaches the Prefect state, the MLflow retrain run and the webhook.
"""

from __future__ import annotations

import numpy as np
from mlflow.tracking import MlflowClient
from PIL import Image

from tests.images import shape, stable_seed
from tests.test_retrain import Webhook, dvc_project
from tlpipe.audit.drift import Drift, mmd_test
from tlpipe.config import RetrainConfig
from tlpipe.ops import tracking
from tlpipe.params_file import load_params
from tlpipe.promotion.retrain import RetrainPlan, plan_by_trigger


def test_the_kernel_test_tells_same_from_shifted():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(300, 64)) + 3.0  # all positive-ish, like pooled features
    same = rng.normal(size=(40, 64)) + 3.0
    shifted = rng.normal(size=(40, 64)) + 3.0
    shifted[:, :8] += 2.0
    _, p_same, _ = mmd_test(reference, same, 500, seed=1)
    statistic, p_shifted, witness = mmd_test(reference, np.vstack([same[:30], shifted[:10]]),
                                             500, seed=1)
    assert p_same > 0.05 and p_shifted < 0.01 and statistic > 0
    assert set(np.argsort(-witness)[:10]) == set(range(30, 40))  # the shifted ones


def test_the_trigger_decides_only_for_changed_data():
    changed = RetrainPlan(True, "data changed since champion v1")
    calm = Drift(False, "3 new image(s) did not drift", 0.001, 0.4, 3, 30, 1000)
    moved = Drift(True, "3 new image(s) drifted", 0.2, 0.001, 3, 30, 1000)
    unknown = Drift(None, "drift not measured: no reference")
    assert plan_by_trigger(changed, calm, RetrainConfig(trigger="changed")).retrain
    assert not plan_by_trigger(changed, calm, RetrainConfig(trigger="drift")).retrain
    assert plan_by_trigger(changed, moved, RetrainConfig(trigger="drift")).retrain
    assert "not measured" in plan_by_trigger(changed, unknown,
                                             RetrainConfig(trigger="drift")).reason


def test_retrain_on_drift_skips_near_copies_and_retrains_on_another_kind(
        tmp_path, prefect_harness):
    from tlpipe.flows.retrain import retrain_flow

    hook = Webhook()
    project = dvc_project(tmp_path / "project", {"train": 16, "val": 8}, {
        "finetune": {"epochs": 0}, "registry": {"model_name": "drift-story"},
        "head": {"candidates": ["logistic"], "logistic_c": [0.1]},
        "retrain": {"notify_url": hook.url, "trigger": "drift"}})
    data = project / "data" / "raw" / "slice"
    params = load_params(project / "params.yaml")
    store = tracking.tracking_uri(params.tracking, project)
    client = MlflowClient(store, store)

    def retrain():
        state = retrain_flow(str(project), return_state=True)
        return state, state.result(raise_on_failure=False)

    state, first = retrain()
    assert first["outcome"] == "promoted" and first["drift"] is None, first

    for index, source in enumerate(sorted((data / "train").rglob("*.jpg"))[:12]):
        with Image.open(source) as image:  # resized and re-encoded: new files, same photos
            image.convert("RGB").resize((image.width * 9 // 10, image.height * 9 // 10)).save(
                source.with_name(f"near_copy_{index}.jpg"), quality=85)
    state, copies = retrain()
    assert state.name == "Skipped", copies
    drift = copies["drift"]
    print(f"near-copies: MMD^2 {drift['statistic']:.4f}, p = {drift['p_value']:.3f}")
    assert drift["drifted"] is False and drift["new_images"] == 12, drift
    assert drift["p_value"] >= params.retrain.drift_significance
    assert "did not drift" in copies["reason"] and "trigger is drift" in copies["reason"]
    assert len(client.search_model_versions("name = 'drift-story'")) == 1

    for index in range(12):
        label = ("ants", "bees")[index % 2]
        shape(("disc", "stripes")[index % 2], stable_seed("drift", index), (200, 150)).save(
            data / "train" / label / f"another_kind_{index}.png")
    state, other = retrain()
    assert state.name in ("Promoted", "Refused"), other
    drift = other["drift"]
    print(f"another kind: MMD^2 {drift['statistic']:.4f}, p = {drift['p_value']:.4f}, "
          f"most unlike: {drift['most_unlike'][:5]}")
    assert drift["drifted"] is True and drift["p_value"] < 0.01, drift
    assert drift["new_images"] == 24 and other["version"] == "2"
    assert any("another_kind" in path for path in drift["most_unlike"][:5]), drift

    runs = client.search_runs([client.get_experiment_by_name("tlpipe").experiment_id],
                              "tags.`tlpipe.kind` = 'retrain'", order_by=["start_time ASC"])
    assert [run.data.tags["retrain.outcome"] for run in runs] == [
        "promoted", "skipped", other["outcome"]]
    assert runs[2].data.metrics["drift_p_value"] == drift["p_value"]
    assert runs[1].data.tags["retrain.drift_drifted"] == "False"
    assert [body["drift"] and body["drift"]["drifted"] for body in hook.received] == [
        None, False, True]
    hook.server.shutdown()
