"""Champion and challenger in the MLflow registry: the decision, recorded.

Every decision is an MLflow run (kind ``promotion``) holding both models' scores, the rule,
each check's outcome and the verdict; the challenger's version gets the verdict as tags. The
aliases move only after everything was recorded, and recoverably: a move cut short by a
failure is put back, one cut short by a kill is finished by the next command
(`tlpipe.promotion.aliases`). The order of champions is kept in the
registered model's ``tlpipe.champion_history`` tag, which is what ``rollback`` walks back.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field

from mlflow.tracking import MlflowClient

from tlpipe import tags
from tlpipe.config import Params, RegistryConfig
from tlpipe.fsio import sha256_text
from tlpipe.metrics import metric_safe, small_split_warning
from tlpipe.ops.tracking import finishing, start_parent_run
from tlpipe.promotion.aliases import RegistryState, finish_pending, move, read_state
from tlpipe.promotion.candidates import Candidates, HeldOutSplit, ScoredCandidates
from tlpipe.promotion.gate import Check, GateResult, Scores, apply_gate

PROMOTING_VERDICTS = ("promoted", "forced")


@dataclass
class Decision:
    model_name: str
    challenger: str
    champion: str | None
    verdict: str            # promoted | refused | forced | unchanged | rollback
    reason: str             # every check in full
    summary: str = ""       # a few words for tables: "failed: floor, mcnemar"
    test_fingerprint: str = ""
    gate: dict = field(default_factory=dict)
    run_id: str | None = None
    reused: bool = False    # an identical earlier decision was returned as it was
    warning: str | None = None  # why the test split is too small to trust, if it is

    @property
    def moves_champion(self) -> bool:
        return self.verdict in PROMOTING_VERDICTS


def decision_key(params: Params, candidates: Candidates, split: HeldOutSplit,
                 force_reason: str | None) -> str:
    """Same versions, same data, same rule, same force: the same decision."""
    rule = params.promotion.model_dump(exclude={"lock_wait_s", "lock_expiry_s",
                                                "after_training"})
    return sha256_text(candidates.model_name, candidates.challenger, candidates.champion,
                       split.fingerprint, json.dumps(rule, sort_keys=True), force_reason)


def already_decided(experiment_id: str, key: str) -> Decision | None:
    """The finished decision recorded under ``key``, if any."""
    found = MlflowClient().search_runs(
        [experiment_id], f"tags.`{tags.DECISION_KEY}` = '{key}' and attributes.status = "
                         "'FINISHED'", max_results=1)
    if not found:
        return None
    recorded = found[0].data.tags
    return Decision(recorded["model_name"], recorded["challenger_version"],
                    recorded["champion_version"] or None, recorded["verdict"],
                    recorded["reason"], recorded["summary"], recorded["test_fingerprint"],
                    run_id=found[0].info.run_id, warning=recorded.get(tags.SMALL_TEST_SPLIT),
                    reused=True)


def decide(params: Params, candidates: Candidates, scored: ScoredCandidates,
           split: HeldOutSplit, force_reason: str | None = None) -> Decision:
    gate = apply_gate(params.promotion, scored.challenger, scored.champion)
    if scored.incomparable:
        gate = GateResult(False, [*gate.checks[:1], Check("comparable", False,
                                                          scored.incomparable)])
    compared = f" vs v{candidates.champion}" if candidates.champion else " (first champion)"
    if force_reason and scored.incomparable:  # clients of the model rely on its classes
        verdict, summary = "refused", f"--force refused: {scored.incomparable}"
        reason = summary
    elif force_reason:
        verdict, summary = "forced", f"forced: {force_reason}"
        reason = (f"forced: {force_reason} (the gate would have "
                  f"{'passed' if gate.passed else 'refused'}: {gate.reason})")
    else:
        verdict, summary = "promoted" if gate.passed else "refused", gate.summary + compared
        reason = gate.reason
    # A small split is said loudly but decides nothing: the gate's own checks (McNemar most of
    # all) already refuse a challenger that so few images cannot show to be better, and with
    # no champion yet, refusing the first model would leave nothing to serve.
    warning = small_split_warning(split.labels, sum(scored.challenger.correct),
                                  params.evaluation.min_test_images,
                                  params.evaluation.min_test_per_class)
    return Decision(candidates.model_name, candidates.challenger, candidates.champion, verdict,
                    reason, summary, split.fingerprint, {**gate.to_dict(), "scores": {
                        role: _public_scores(scores) for role, scores in
                        (("challenger", scored.challenger), ("champion", scored.champion))
                        if scores is not None}}, warning=warning)


def _public_scores(scores: Scores) -> dict:
    return {k: v for k, v in asdict(scores).items()
            if k not in ("correct", "truth", "predicted")}


def record_decision(params: Params, experiment_id: str, decision: Decision,
                    scored: ScoredCandidates, split: HeldOutSplit, key: str,
                    run_tags: dict[str, str]) -> Decision:
    """One MLflow run for the decision; then the verdict tags and, on a pass, the aliases
    move (recoverably: see `tlpipe.promotion.aliases`)."""
    client, registry = MlflowClient(), params.registry
    finish_pending(client, decision.model_name)  # a retry after an outage part-way
    run_id = start_parent_run(experiment_id, f"promote v{decision.challenger}", {
        tags.KIND: "promotion", tags.DECISION_KEY: key, **run_tags, **decision_tags(decision)})
    decision.run_id = run_id
    with finishing(run_id):
        _log_scores(client, run_id, params, decision, scored, split)
        before = read_state(client, decision.model_name, promotion_aliases(registry),
                            [decision.challenger])
        move(client, decision.model_name, run_id, before,
             _after_decision(before, registry, decision, run_id))
    return decision


def promotion_aliases(registry: RegistryConfig) -> list[str]:
    return [registry.champion_alias, registry.previous_alias]


def decision_tags(decision: Decision) -> dict[str, str]:
    return {"model_name": decision.model_name, "challenger_version": decision.challenger,
            "champion_version": decision.champion or "", "verdict": decision.verdict,
            "reason": decision.reason[:4000], "summary": decision.summary,
            "test_fingerprint": decision.test_fingerprint,
            **({tags.SMALL_TEST_SPLIT: decision.warning[:4000]} if decision.warning else {})}


def _log_scores(client: MlflowClient, run_id: str, params: Params, decision: Decision,
                scored: ScoredCandidates, split: HeldOutSplit) -> None:
    for key, value in params.promotion.model_dump().items():
        client.log_param(run_id, f"promotion.{key}", value)
    metrics = {"n_test": len(split.paths)}
    for role, scores in (("challenger", scored.challenger), ("champion", scored.champion)):
        if scores is None:
            continue
        metrics.update({f"{role}_{k}": v for k, v in scores.metrics.items()})
        metrics.update({f"{role}_recall_{metric_safe(k)}": v for k, v in scores.recall.items()})
    for check in decision.gate.get("checks", []):
        client.set_tag(run_id, f"check.{check['name']}",
                       f"{'pass' if check['passed'] else 'FAIL'}: {check['detail']}"[:4000])
    for name, value in metrics.items():
        client.log_metric(run_id, name, float(value))
    client.log_dict(run_id, {**asdict(decision), "run_id": run_id}, "decision.json")
    client.log_text(run_id, _per_image_csv(split, scored), "per_image.csv")


def _per_image_csv(split: HeldOutSplit, scored: ScoredCandidates) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "label", "challenger_correct", "champion_correct"])
    champion = scored.champion.correct if scored.champion else [None] * len(split.paths)
    for row in zip(split.paths, split.labels, scored.challenger.correct, champion, strict=True):
        writer.writerow(row)
    return buffer.getvalue()


def _after_decision(before: RegistryState, registry: RegistryConfig, decision: Decision,
                    run_id: str) -> RegistryState:
    """The verdict on the challenger's tags; on a pass, the challenger becomes champion and
    the champion before it `previous`."""
    challenger = decision.challenger
    verdict = {tags.VERDICT: decision.verdict, tags.SUMMARY: decision.summary,
               tags.REASON: decision.reason[:4000], tags.DECISION_RUN: run_id,
               tags.COMPARED_WITH: decision.champion or "none"}
    after = RegistryState(dict(before.aliases), list(before.history), {
        challenger: {**before.version_tags[challenger], **verdict}})
    if not decision.moves_champion:
        return after
    current = before.aliases[registry.champion_alias]
    history = [v for v in before.history if v != challenger]
    if current is not None:
        if not history or history[-1] != current:  # aliases were moved by hand meanwhile
            history.append(current)
        after.aliases[registry.previous_alias] = current
    after.aliases[registry.champion_alias] = challenger
    after.history = [*history, challenger]
    return after
