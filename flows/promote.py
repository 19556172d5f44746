"""The promotion flow: score the challenger and the champion on today's test split, apply the
gate, record the decision and, only if it passes, make the challenger champion."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from prefect import flow
from prefect.runtime import flow_run
from prefect.states import Completed, State

from tlpipe import tags
from tlpipe.config import Params
from tlpipe.flows.hooks import cancelled_when_stopped
from tlpipe.ops.tracking import configure, mark_abandoned_runs
from tlpipe.promotion.decision import Decision, already_decided, decide, decision_key
from tlpipe.promotion.lock import registry_lock
from tlpipe.tasks.artifacts import publish_promotion
from tlpipe.tasks.promotion import (
    current_test_split,
    find_candidates,
    finish_unfinished_decision,
    record_decision,
    score_candidates,
)


@flow(name="tlpipe-promote", log_prints=True, on_crashed=[cancelled_when_stopped])
def promote_flow(params: Params, project_dir: str = ".", version: str | None = None,
                 force_reason: str | None = None) -> State:
    """Promote ``version`` (default: the challenger) to champion if it beats the champion on
    the current test split; with ``force_reason``, promote it regardless, recording why."""
    project = Path(project_dir).resolve()
    experiment_id = configure(params.tracking, project)
    mark_abandoned_runs(experiment_id)  # decisions whose process was killed
    split = current_test_split(params, project)
    # One promotion at a time per model: the champion read below stays the champion until
    # this decision is recorded.
    with registry_lock(params.registry.model_name, params.promotion.lock_wait_s,
                       params.promotion.lock_expiry_s):
        recovered = finish_unfinished_decision(params.registry)
        if recovered:
            print(recovered)
        candidates = find_candidates(params.registry, version)
        if candidates.challenger == candidates.champion:
            decision = Decision(candidates.model_name, candidates.challenger,
                                candidates.champion, "unchanged",
                                f"v{candidates.challenger} is already "
                                f"@{params.registry.champion_alias}", "already champion")
        else:
            key = decision_key(params, candidates, split, force_reason)
            decision = already_decided(experiment_id, key)
            if decision is None:
                scored = score_candidates(candidates, split, params)
                decision = record_decision(
                    params, experiment_id, decide(params, candidates, scored, split,
                                                  force_reason),
                    scored, split, key, {tags.PREFECT_FLOW_RUN_ID: str(flow_run.get_id())})
    print(f"{decision.model_name} v{decision.challenger}: {decision.verdict.upper()}"
          f"{' (decided earlier, run ' + decision.run_id + ')' if decision.reused else ''}: "
          f"{decision.reason}")
    publish_promotion(params.registry, asdict(decision))
    # The run's state in the Prefect UI names the verdict: Promoted, Refused, Forced, ...
    return Completed(name=decision.verdict.title(), message=decision.reason[:500],
                     data=asdict(decision))
