"""State hooks shared by the flows."""

from __future__ import annotations

from prefect import Flow, get_client
from prefect.client.schemas.objects import FlowRun
from prefect.exceptions import TerminationSignal
from prefect.states import Cancelled, State


def cancelled_when_stopped(flow: Flow, flow_run: FlowRun, state: State) -> None:
    """Prefect records Ctrl-C (and SIGTERM) as a crash; it is someone stopping the run, so
    the run is marked Cancelled. A crashed state carries its exception locally as data."""
    if isinstance(state.data, KeyboardInterrupt | TerminationSignal):
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(flow_run.id, Cancelled(
                message=f"stopped by {type(state.data).__name__}"), force=True)
