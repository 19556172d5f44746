"""`tlpipe stack up|down|status`: the team stack on loopback; `tlpipe ui`: this project's
UIs alone."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated

import typer

from tlpipe.cli.common import ParamsOption, SetOption, fail, registry_settings

stack_app = typer.Typer(help="The team stack on loopback: Prefect server, work pool and worker; "
                             "MLflow server on PostgreSQL; a DVC directory remote.",
                        no_args_is_help=True)


@stack_app.command("up")
def up(
    host: Annotated[str, typer.Option(help="Address the servers bind to.")] = "127.0.0.1",
    prefect_port: int = 4200,
    mlflow_port: int = 5000,
    postgres_port: int = 55432,
    worker: Annotated[bool, typer.Option(help="Start a worker on the work pool.")] = True,
) -> None:
    """Start the stack under .stack/, or restart what of it is down; then `source
    .stack/team.env` to use it."""
    from tlpipe.ops.stack import team

    state = team.up(Path.cwd(), team.Ports(prefect_port, mlflow_port, postgres_port), host,
                    worker)
    if state.restarted:
        typer.secho(f"restarted: {', '.join(state.restarted)}", fg=typer.colors.YELLOW)
    typer.secho(f"Prefect: {state.prefect_api[:-4]}  MLflow: {state.mlflow_uri}  "
                f"work pool: {team.WORK_POOL}", fg=typer.colors.GREEN)
    typer.echo("Next: source .stack/team.env && prefect --no-prompt deploy --all")


@stack_app.command("down")
def down() -> None:
    """Stop the worker, the servers and PostgreSQL, with all their child processes."""
    from tlpipe.ops.stack import team

    stopped = team.down(Path.cwd())
    typer.echo(f"stopped: {', '.join(stopped)}" if stopped else "no stack was running here")


@stack_app.command("status")
def status() -> None:
    """Which parts of the stack are running."""
    from tlpipe.ops.stack import team

    alive = team.status(Path.cwd())
    if not alive:
        fail("no stack here: `tlpipe stack up`", 1)
    for name, running in alive.items():
        typer.echo(f"{name:<15} {'running' if running else 'stopped'}")
    raise typer.Exit(0 if all(alive.values()) else 1)


def ui(
    mlflow_port: Annotated[int | None, typer.Option(help="Default: a free port.")] = None,
    prefect_port: Annotated[int | None, typer.Option(help="Default: a free port.")] = None,
    params: ParamsOption = Path("params.yaml"),
    set_: SetOption = None,
) -> None:
    """Open this project's MLflow UI (runs, plots, registry) and Prefect UI (flow runs) on
    loopback until Ctrl-C; nothing is scheduled and no team stack is needed."""
    registry_settings(params, set_)  # MLflow pointed at the project's store
    import mlflow

    from tlpipe.ops.stack.ui import ui_servers

    typer.echo("Starting the MLflow and Prefect UIs (about 15 s)...")
    with ui_servers(Path.cwd(), mlflow.get_tracking_uri(), mlflow_port, prefect_port) as up:
        typer.secho(f"MLflow:  {up.mlflow}", fg=typer.colors.GREEN)
        typer.secho(f"Prefect: {up.prefect}", fg=typer.colors.GREEN)
        typer.echo(f"Logs in {up.logs}. Ctrl-C stops both.")
        stop = {signal.SIGINT, signal.SIGTERM}
        signal.pthread_sigmask(signal.SIG_BLOCK, stop)  # taken by sigwait, then cleaned up
        signal.sigwait(stop)
    typer.echo("stopped")
