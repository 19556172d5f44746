"""The flows the command line starts. The CLI imports Prefect through this module only, and
only inside the commands that start a flow: Prefect reads its settings when first imported."""

from __future__ import annotations

import logging

from prefect.logging.handlers import PrefectConsoleHandler

from flows.promote import promote_flow
from flows.retrain import retrain_flow, retrain_schedule, serve_retrain
from flows.train import train_flow
from tlpipe.errors import TlpipeError

__all__ = ["hide_expected_tracebacks", "promote_flow", "retrain_flow", "retrain_schedule",
           "serve_retrain", "train_flow"]


def _message_only(record: logging.LogRecord) -> bool:
    if record.exc_info and isinstance(record.exc_info[1], TlpipeError):
        record.exc_info, record.exc_text = None, None
    return True


def hide_expected_tracebacks() -> None:
    """Prefect logs every failed task and flow run with its traceback. For tlpipe's expected
    failures the message says it all, so the console gets the message alone; Prefect's API
    handler (the UI) has seen the record before the console does, and keeps the traceback."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler) and _message_only not in handler.filters:
            handler.addFilter(_message_only)
