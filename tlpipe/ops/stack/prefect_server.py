"""The Prefect server: for the team stack, and for `tlpipe schedule` (schedules need a server:
the ephemeral API does not run the scheduler)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from tlpipe.commands import python_tool
from tlpipe.ops.processes import environment, start_process, stop_tree, wait_healthy
from tlpipe.ops.runtime import SERVER_QUIET


def start_prefect_server(home: Path, logs: Path, host: str, port: int,
                         marker: dict[str, str] | None = None) -> int:
    """``prefect server start`` with its state in ``home``; ``marker`` is set in its
    environment (the stack finds what a killed server left behind by it)."""
    return start_process("prefect-server", [*python_tool("prefect"), "server", "start",
                                            "--host", host, "--port", str(port)], logs,
                         environment({**SERVER_QUIET, "PREFECT_HOME": str(home),
                                      "PREFECT_API_URL": None, **(marker or {})}))


@contextlib.contextmanager
def prefect_server(home: Path, logs: Path, host: str = "127.0.0.1", port: int = 4200
                   ) -> Iterator[str]:
    """A Prefect server for the duration of the block. Yields its API URL."""
    pid = start_prefect_server(home, logs, host, port)
    try:
        url = f"http://{host}:{port}/api"
        wait_healthy(f"{url}/health", pid, logs / "prefect-server.log")
        yield url
    finally:
        stop_tree(pid)
