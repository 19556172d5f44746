"""Rollback: the champion alias back to the previous champion, recorded like any decision."""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from tlpipe import tags
from tlpipe.config import Params
from tlpipe.ops.tracking import finishing, start_parent_run
from tlpipe.promotion.aliases import RegistryState, finish_pending, move, read_state
from tlpipe.promotion.decision import Decision, decision_tags, promotion_aliases
from tlpipe.promotion.lock import registry_lock
from tlpipe.promotion.scoring import PromotionError
from tlpipe.registry.versions import alias_version


def rollback(params: Params, experiment_id: str, reason: str, run_tags: dict[str, str]
             ) -> Decision:
    """Champion back to ``previous``; ``previous`` back to the champion before that."""
    with registry_lock(params.registry.model_name, params.promotion.lock_wait_s,
                       params.promotion.lock_expiry_s):
        return _rollback(params, experiment_id, reason, run_tags)


def _rollback(params: Params, experiment_id: str, reason: str, run_tags: dict[str, str]
              ) -> Decision:
    client, registry = MlflowClient(), params.registry
    name = registry.model_name
    finish_pending(client, name)
    current = alias_version(client, name, registry.champion_alias)
    target = alias_version(client, name, registry.previous_alias)
    if target is None or target == current:
        raise PromotionError(f"{name!r} has no @{registry.previous_alias} version other than "
                             "the champion to roll back to; `tlpipe models` shows the aliases")
    before = read_state(client, name, promotion_aliases(registry),
                        [v for v in (current, target) if v])
    # Walk back to the target's place in the history; what was champion before it is next.
    history = before.history
    earlier = history[:len(history) - history[::-1].index(target)] if target in history \
        else [target]
    decision = Decision(name, target, current, "rollback",
                        f"rollback from v{current} to v{target}: {reason}", f"rollback: {reason}")
    run_id = start_parent_run(experiment_id, f"rollback to v{target}", {
        tags.KIND: "promotion", **run_tags, **decision_tags(decision)})
    decision.run_id = run_id
    after = RegistryState(
        {registry.champion_alias: target,
         registry.previous_alias: earlier[-2] if len(earlier) > 1 else None},
        earlier, {v: dict(t) for v, t in before.version_tags.items()})
    after.version_tags[target][tags.RESTORED_BY] = run_id
    if current is not None:
        after.version_tags[current][tags.ROLLED_BACK_BY] = run_id
    with finishing(run_id):
        move(client, name, run_id, before, after)
    return decision
