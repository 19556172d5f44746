"""Prefect tasks of the promotion flow: each wraps one function of the promotion wing.

Every registry call can hit a transient outage, so those tasks retry; a retried decision is
safe, because the aliases move all together or not at all.
"""

from __future__ import annotations

from tlpipe.promotion import aliases, decision, scoring
from tlpipe.tasks.common import IO_RETRIES, step_task

current_test_split = step_task(scoring.current_test_split)
finish_unfinished_decision = step_task(aliases.finish_unfinished_decision, **IO_RETRIES)
find_candidates = step_task(scoring.find_candidates, **IO_RETRIES)
score_candidates = step_task(scoring.score_candidates, **IO_RETRIES)
record_decision = step_task(decision.record_decision, **IO_RETRIES)
