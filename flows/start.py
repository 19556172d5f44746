"""The flows the command line starts. The CLI imports Prefect through this module only, and
only inside the commands that start a flow: Prefect reads its settings when first imported."""

from __future__ import annotations

import functools
import logging
import subprocess
from collections.abc import Callable

from prefect.logging.handlers import PrefectConsoleHandler

from tlpipe.errors import TlpipeError, is_expected
from tlpipe.flows.promote import promote_flow
from tlpipe.flows.retrain import retrain_flow, retrain_schedule, serve_retrain
from tlpipe.flows.train import train_flow
from tlpipe.ops.tracking import unhealthy
from tlpipe.ops.watchdog import stop_with_this_process

__all__ = ["hide_expected_tracebacks", "prepare", "promote_flow", "retrain_flow",
           "retrain_schedule", "serve_retrain", "start_temporary_server", "train_flow"]


class PrefectUnavailable(TlpipeError):
    """The Prefect API named in the settings does not answer."""


def _message_only(record: logging.LogRecord) -> bool:
    if record.exc_info and is_expected(record.exc_info[1]):
        record.exc_info, record.exc_text = None, None
    return True


def hide_expected_tracebacks() -> None:
    """Prefect logs every failed task and flow run with its traceback. For tlpipe's expected
    failures the message says it all, so the console gets the message alone; Prefect's API
    handler (the UI) has seen the record before the console does, and keeps the traceback."""
    _filter_console(_message_only)


def _filter_console(keep: Callable[[logging.LogRecord], bool]) -> None:
    """Add ``keep`` to Prefect's console handlers, once."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler) and keep not in handler.filters:
            handler.addFilter(keep)


# Lines that say only that things ran as they should: the console leaves them out unless
# --verbose (Prefect's UI and the MLflow run keep everything).
ROUTINE = ("Finished in state", "Beginning flow run", "Beginning subflow run",
           "Starting temporary server", "Stopping temporary server",
           "Created temporary directory")
# Prefect's lines for a failed task or flow: an expected failure (errors.is_expected) is said once,
# by the command, at the end.
FAILURE = ("Task run failed with exception", "Encountered exception during execution")


def _not_routine(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    if message.startswith(ROUTINE):
        return False
    expected = record.exc_info and is_expected(record.exc_info[1])
    return not (expected and message.startswith(FAILURE))


def prepare(show_tracebacks: bool, server: bool = True) -> None:
    """Ready the console and (with ``server``) the Prefect server for a flow started from the
    command line: the user's, checked, or a temporary one. Without ``--verbose``
    (``show_tracebacks``), the console gets the stage lines and the verdict, not Prefect's
    routine state lines."""
    if not show_tracebacks:
        _filter_console(_not_routine)  # before the traceback is taken off
        hide_expected_tracebacks()
        logging.getLogger("mlflow").setLevel(logging.WARNING)  # "Validating input example"
    if server:
        start_temporary_server()


def start_temporary_server() -> None:
    """Start Prefect's temporary server now (the very instance its client would start on first
    use), in a session of its own and watched: Prefect stops it only on a normal exit, so a
    killed command left it running; and a terminal's Ctrl-C, sent to the whole foreground
    process group, stopped it before the interrupted run could be recorded (then the exit
    waited about a minute on a server that was gone)."""
    from prefect.server.api.server import SubprocessASGIServer  # as Prefect's client does
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        _check_prefect_api(PREFECT_API_URL.value())
        return  # a server of the user's: not ours to stop
    server = SubprocessASGIServer()
    if not server.running:
        server._run_uvicorn_command = _watched(server._run_uvicorn_command)
        server.start()


def _check_prefect_api(url: str, timeout_s: float = 10) -> None:
    """Fail in seconds, naming the server: Prefect's client retries an absent API for minutes."""
    why = unhealthy(url, timeout_s)
    if why:
        raise PrefectUnavailable(
            f"the Prefect API {url} (PREFECT_API_URL) does not answer ({why}): start it "
            "(`tlpipe stack up` for the team stack), or unset PREFECT_API_URL to run with a "
            "temporary server of this command's own")


def _watched(launch: Callable[[], subprocess.Popen]) -> Callable[[], subprocess.Popen]:
    """Prefect's own launch of the server, with ``start_new_session`` added to its Popen and
    the watchdog started the moment the server process exists."""
    def launch_watched() -> subprocess.Popen:
        popen = subprocess.Popen
        subprocess.Popen = functools.partial(popen, start_new_session=True)
        try:
            server = launch()
        finally:
            subprocess.Popen = popen
        stop_with_this_process(server.pid)
        return server
    return launch_watched
