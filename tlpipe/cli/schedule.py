"""Commands that keep a model fresh: `tlpipe retrain` once, `tlpipe schedule` on a schedule."""

from __future__ import annotations

import contextlib
import os
import traceback
from pathlib import Path
from typing import Annotated

import typer

from tlpipe.cli.common import ParamsOption, SetOption, fail, load_settings, options


def retrain(
    force: Annotated[bool, typer.Option(help="Retrain even if the data has not changed.")
                     ] = False,
    params: ParamsOption = Path("params.yaml"),
    set_: SetOption = None,
) -> None:
    """Retrain if the data changed since the champion was trained (its DVC data version
    against the data now), then run the promotion gate. Exit 0 when skipped or promoted, 1
    when refused or failed. `tlpipe schedule` runs this on a schedule."""
    load_settings(params, set_)  # bad settings fail here, naming the key, before any flow starts
    from tlpipe.flows import start
    from tlpipe.params_file import overrides_from

    start.prepare(show_tracebacks=options["verbose"])
    try:
        outcome = start.retrain_flow(str(Path.cwd()), str(params), force, overrides_from(set_))
    except Exception as error:  # the outcome (failed, and why) is recorded by the flow
        if options["verbose"]:
            traceback.print_exc()
        fail(f"retrain failed: {error}", 1)
    good = outcome["outcome"] in ("promoted", "skipped")
    typer.secho(f"{outcome['outcome'].upper()}: {outcome['reason']}",
                fg=typer.colors.GREEN if good else typer.colors.RED)
    raise typer.Exit(0 if good else 1)


def schedule(
    cron: Annotated[str | None, typer.Option(help='Cron schedule, e.g. "0 3 * * *".')] = None,
    interval: Annotated[int | None, typer.Option(help="Or every this many seconds.")] = None,
    timezone: Annotated[str, typer.Option(help="Time zone of the cron schedule.")] = "UTC",
    port: Annotated[int, typer.Option(
        help="Port of the Prefect server started when PREFECT_API_URL is not set.")] = 4200,
    params: ParamsOption = Path("params.yaml"),
    set_: SetOption = None,
) -> None:
    """Serve the retrain flow on a schedule until stopped (Ctrl-C). Runs never overlap: a tick
    that comes while a retrain is running is cancelled. Without PREFECT_API_URL, a Prefect
    server for this project starts on 127.0.0.1 (its UI shows the runs) and stops with it."""
    if (cron is None) == (interval is None):
        fail("give exactly one of --cron or --interval", 2)
    if interval is not None and interval <= 0:
        fail("--interval must be a positive number of seconds", 2)
    project = Path.cwd()
    load_settings(params, set_)
    from tlpipe.ops.stack.prefect_server import prefect_server
    from tlpipe.params_file import overrides_from

    own_server = not os.environ.get("PREFECT_API_URL")
    if own_server:  # before Prefect is imported: it reads PREFECT_API_URL then
        os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
    from tlpipe.flows import start

    start.prepare(show_tracebacks=options["verbose"], server=not own_server)  # ours: below
    try:  # checked before any server starts
        when = start.retrain_schedule(cron, interval, timezone)
    except ValueError as error:
        fail(f"--cron {cron!r} / --timezone {timezone!r}: {error}", 2)
    with contextlib.ExitStack() as servers:
        if own_server:
            servers.enter_context(prefect_server(
                Path(os.environ["PREFECT_HOME"]), project / ".prefect" / "logs", port=port))
            typer.echo(f"Prefect server for this project: {os.environ['PREFECT_API_URL'][:-4]}")
        start.serve_retrain(project, params, when, overrides_from(set_))
