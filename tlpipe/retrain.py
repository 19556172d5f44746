"""Retraining on a schedule: is there anything new to learn from, and what came of it.

The data version (DVC's hash of the data folder) is compared with the one each registered
version was trained on. A retrain happens when the data differs from the champion's, unless
the newest version was already trained on exactly this data and refused: training it again
would only repeat that verdict on every tick.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from mlflow.tracking import MlflowClient

from tlpipe import tags
from tlpipe.config import Params, RegistryConfig
from tlpipe.data_version import DataVersion, pointer_md5, record_data_version
from tlpipe.model_versions import alias_version
from tlpipe.paths import data_root, resolve
from tlpipe.promotion import PROMOTING_VERDICTS


@dataclass(frozen=True)
class TrainedOn:
    """A registered version and the data version it was trained on."""

    version: str
    data_md5: str
    verdict: str | None  # the promotion verdict recorded on it, if any


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
                                   state_dir=resolve(project, params.data.state_dir))
    pointer = Path(f"{root}.dvc")
    return DataVersion(pointer_md5(pointer) or "untracked", str(pointer), None, False)


def _trained_on(version) -> TrainedOn:
    return TrainedOn(str(version.version), version.tags.get(tags.DATA_DVC_MD5, "unknown"),
                     version.tags.get(tags.VERDICT))


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

    def to_dict(self) -> dict:
        return asdict(self)

    def tags(self) -> dict[str, str]:
        return {f"retrain.{key}": str(value)[:4000] for key, value in asdict(self).items()
                if value is not None and key != "retrain_run_id"}


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
