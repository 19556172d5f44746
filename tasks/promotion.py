"""Prefect tasks of the promotion flow: each wraps one function of ``tlpipe.promotion``.

Every registry call can hit a transient outage, so those tasks retry; a retried decision is
safe, because the aliases move all together or not at all.
"""

from __future__ import annotations

from tasks.common import IO_RETRIES, step_task
from tlpipe import promotion

current_test_split = step_task(promotion.current_test_split)
finish_unfinished_decision = step_task(promotion.finish_unfinished_decision, **IO_RETRIES)
find_candidates = step_task(promotion.find_candidates, **IO_RETRIES)
score_candidates = step_task(promotion.score_candidates, **IO_RETRIES)
record_decision = step_task(promotion.record_decision, **IO_RETRIES)
