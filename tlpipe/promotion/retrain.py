"""Retraining on a schedule: is there anything new to learn from, and what came of it.

The data version (DVC's hash of the data folder) is compared with the one each registered
version was trained on. A retrain happens when the data differs from the champion's, unless
the newest version was already trained on exactly this data and refused: training it again
would only repeat that verdict on every tick. When the data changed under a champion, the new
images are tested for drift from its training images (``tlpipe.audit.drift``); with
``retrain.trigger: drift`` only a drift retrains.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from mlflow.tracking import MlflowClient

from tlpipe import tags
from tlpipe.audit.drift import Drift, DriftNotMeasured, measure_drift
from tlpipe.config import Params, RegistryConfig, RetrainConfig
from tlpipe.data.version import DataVersion, pointer_md5, record_data_version
from tlpipe.paths import data_root, resolve
from tlpipe.promotion.decision import PROMOTING_VERDICTS
from tlpipe.registry.versions import alias_version


@dataclass(frozen=True)
class TrainedOn:
    """A registered version and the data version it was trained on."""

    version: str
    data_md5: str
    verdict: str | None  # the promotion verdict recorded on it, if any
    run_id: str | None = None          # the pipeline run that trained it
    weights_digest: str | None = None  # its backbone's weights


@dataclass(frozen=True)
class RetrainPlan:
    retrain: bool
    reason: str


def current_data_version(params: Params, project: Path) -> DataVersion:
    """The data's DVC version now: recorded with `dvc add` (retrain.version_data), or read
    from the pointer as the user left it."""
    root = data_root(params, project)
    if params.retrain.version_data:
        return record_data_version(root, project, commit=True, push=params.retrain.push_data,
                                   state_dir=resolve(project, params.data.state_dir),
                                   push_timeout_s=params.retrain.push_timeout_s)
    pointer = Path(f"{root}.dvc")
    return DataVersion(pointer_md5(pointer) or "untracked", str(pointer), None, False)


def _trained_on(version) -> TrainedOn:
    return TrainedOn(str(version.version), version.tags.get(tags.DATA_DVC_MD5, "unknown"),
                     version.tags.get(tags.VERDICT), version.tags.get(tags.PIPELINE_RUN_ID),
                     version.tags.get(tags.WEIGHTS_DIGEST))


def registered_state(registry: RegistryConfig) -> tuple[TrainedOn | None, TrainedOn | None]:
    """The champion and the newest version of the registered model (None where absent)."""
    client, name = MlflowClient(), registry.model_name
    versions = client.search_model_versions(f"name = '{name}'")
    if not versions:
        return None, None
    newest = max(versions, key=lambda version: int(version.version))
    champion_number = alias_version(client, name, registry.champion_alias)
    champion = next((v for v in versions if str(v.version) == champion_number), None)
    return _trained_on(champion) if champion else None, _trained_on(newest)


def plan_retrain(data_md5: str, champion: TrainedOn | None, newest: TrainedOn | None,
                 force: bool = False) -> RetrainPlan:
    """Retrain when the data is new to the registry; say why either way."""
    short = data_md5[:12]
    if force:
        return RetrainPlan(True, "forced")
    if data_md5 in ("untracked", "unknown"):
        return RetrainPlan(True, "the data is not versioned by DVC, so it cannot be compared "
                                 "with the champion's: retraining")
    if champion is not None and champion.data_md5 == data_md5:
        return RetrainPlan(False, f"no new data: champion v{champion.version} was trained on "
                                  f"this data version ({short})")
    if (newest is not None and newest.data_md5 == data_md5
            and newest.verdict == "refused"):
        return RetrainPlan(False, f"no new data since v{newest.version}, trained on this data "
                                  f"version ({short}) and refused by the gate")
    if champion is None:
        return RetrainPlan(True, f"no champion yet: training on data {short}")
    return RetrainPlan(True, f"data changed since champion v{champion.version}: "
                             f"{champion.data_md5[:12]} -> {short}")


def check_drift(params: Params, project: Path, champion: TrainedOn) -> Drift:
    """The drift of the new images from the champion's training images; a test that cannot
    run says why instead of failing the retrain."""
    try:
        if champion.run_id is None:
            raise DriftNotMeasured(f"champion v{champion.version} names no pipeline run")
        return measure_drift(params, project, champion.run_id, champion.weights_digest)
    except DriftNotMeasured as error:
        return Drift(None, f"drift not measured: {error}")


def plan_by_trigger(plan: RetrainPlan, drift: Drift, config: RetrainConfig) -> RetrainPlan:
    """With ``retrain.trigger: drift``, changed data retrains only when it drifted (or when
    drift could not be measured: then the change alone decides, and the reason says so)."""
    if config.trigger == "changed" or drift.drifted is None:
        return RetrainPlan(plan.retrain, f"{plan.reason}; {drift.reason}")
    if drift.drifted:
        return RetrainPlan(True, f"{plan.reason}; {drift.reason}")
    return RetrainPlan(False, f"{plan.reason}, but {drift.reason}; retrain.trigger is drift")


@dataclass
class Outcome:
    """What one retrain came to, why, and where to look."""

    outcome: str                        # skipped | promoted | refused | failed
    reason: str
    model_name: str
    data_md5: str = ""
    version: str | None = None          # the version trained by this retrain
    champion: str | None = None         # the champion after it
    training_run_id: str | None = None
    decision_run_id: str | None = None
    retrain_run_id: str | None = None
    prefect_flow_run_id: str | None = None
    drift: dict | None = None           # Drift.to_dict(), when the data changed under a champion

    def to_dict(self) -> dict:
        return asdict(self)

    def tags(self) -> dict[str, str]:
        flat = {key: value for key, value in asdict(self).items()
                if value is not None and key not in ("retrain_run_id", "drift")}
        flat.update({f"drift_{key}": json.dumps(value) if isinstance(value, list) else value
                     for key, value in (self.drift or {}).items() if value is not None})
        return {f"retrain.{key}": str(value)[:4000] for key, value in flat.items()}

    def metrics(self) -> dict[str, float]:
        drift = self.drift or {}
        return {f"drift_{key}": float(drift[key]) for key in ("statistic", "p_value",
                                                               "new_images")
                if drift.get(key) is not None}


def outcome_of_decision(decision: dict) -> str:
    return "promoted" if decision["verdict"] in PROMOTING_VERDICTS else "refused"


class NotifyError(RuntimeError):
    pass


def notify(url: str, outcome: Outcome, timeout_s: float) -> int:
    """POST the outcome as JSON to ``url``; the HTTP status, or NotifyError saying why not."""
    body = json.dumps({"event": "tlpipe.retrain", **outcome.to_dict()}).encode()
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status
    except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
        raise NotifyError(f"retrain.notify_url {url}: {error}") from None
