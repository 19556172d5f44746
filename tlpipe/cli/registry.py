"""Commands over the model registry: `tlpipe models`, `promote`, `rollback`, `lineage`,
`verify`, `reproduce`. The read-only ones import neither torch nor timm (tests/test_cli.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tlpipe.cli.common import (
    ModelUri,
    ParamsOption,
    SetOption,
    fail,
    load_settings,
    options,
    print_decision,
    registry_settings,
)


def models(params: ParamsOption = Path("params.yaml"), set_: SetOption = None) -> None:
    """List the registered versions: aliases, test metrics, data version, promotion verdicts."""
    settings = registry_settings(params, set_)
    import mlflow
    from rich.console import Console
    from rich.table import Table

    from tlpipe.promotion.aliases import finish_pending_under_lock
    from tlpipe.registry.versions import version_rows

    # Listing the versions is when a user looks: a move a killed promotion left part-way is
    # finished now (read-only, no lock taken, when there is none).
    recovered = finish_pending_under_lock(settings.registry, settings.promotion)
    if recovered:
        typer.secho(recovered, fg=typer.colors.YELLOW)
    rows = version_rows(settings.registry)
    if not rows:
        fail(f"no versions of {settings.registry.model_name!r} yet: run `tlpipe run`", 1)
    table = Table(title=f"{settings.registry.model_name} in {mlflow.get_tracking_uri()}")
    for column in rows[0]:
        table.add_column(column, overflow="fold", no_wrap=column != "decision")
    for row in rows:
        table.add_row(*row.values())
    Console(width=max(120, Console().width)).print(table)


def promote(
    version: Annotated[str | None, typer.Argument(
        help="Version to promote; default: the one holding registry.alias (the challenger)."
    )] = None,
    force: Annotated[bool, typer.Option(
        help="Promote even if the gate refuses; needs --reason, and is recorded as forced.")
    ] = False,
    reason: Annotated[str | None, typer.Option(help="Why a forced promotion is needed.")] = None,
    params: ParamsOption = Path("params.yaml"),
    set_: SetOption = None,
) -> None:
    """Score the challenger and the champion on the current test split and make the challenger
    champion if it passes the gate in params.yaml (promotion.*). Exit 0 when it is (or already
    was) champion, 1 when refused."""
    if force and not (version and reason):
        fail("--force needs an explicit VERSION and --reason TEXT (both are recorded)", 2)
    if reason and not force:
        fail("--reason is only for --force; a gated promotion records the gate's reasons", 2)
    settings = load_settings(params, set_)
    from tlpipe.flows import start

    start.prepare(show_tracebacks=options["verbose"])
    decision = start.promote_flow(settings, str(Path.cwd()), version, reason if force else None)
    print_decision(decision)
    raise typer.Exit(1 if decision["verdict"] == "refused" else 0)


def rollback(
    reason: Annotated[str, typer.Option(help="Why; recorded with the rollback.")] = "manual",
    params: ParamsOption = Path("params.yaml"),
    set_: SetOption = None,
) -> None:
    """Move the champion alias back to the previous champion, and record it in MLflow."""
    settings = registry_settings(params, set_)
    from dataclasses import asdict

    from tlpipe.ops import tracking
    from tlpipe.promotion.rollback import rollback as roll_back
    from tlpipe.registry.lineage import git_state

    experiment_id = tracking.configure(settings.tracking, Path.cwd())
    tracking.mark_abandoned_runs(experiment_id)
    print_decision(asdict(roll_back(settings, experiment_id, reason, git_state(Path.cwd()))))


def lineage(model_uri: ModelUri, params: ParamsOption = Path("params.yaml"),
            set_: SetOption = None) -> None:
    """Print where a registered model came from: commit, data version, params, metrics."""
    registry_settings(params, set_)
    from tlpipe.registry.lineage import lineage as find_lineage

    typer.echo("\n".join(find_lineage(model_uri).lines()))


def verify(
    model_uri: ModelUri,
    to: Annotated[Path | None, typer.Option(
        "--to", help="Leave the verified copy in this new or empty folder, e.g. for "
                     "`mlflow models serve -m DIR`.")] = None,
    params: ParamsOption = Path("params.yaml"),
    set_: SetOption = None,
) -> None:
    """Check a registered model's stored files (code, weights, MLmodel) against the digest
    recorded in the registry when it was registered. Exit 0 when they match, 1 otherwise."""
    if to is not None:
        to = to.resolve()
        if to.exists() and (not to.is_dir() or any(to.iterdir())):
            fail(f"--to {to}: not a new or empty folder", 2)
    registry_settings(params, set_)
    from tlpipe import tags
    from tlpipe.registry.loader import copy_verified_to, resolve_version, verified_copy

    version = resolve_version(model_uri)
    if to is None:
        with verified_copy(version):
            pass
    else:
        copy_verified_to(version, to)
    typer.secho(f"OK: {model_uri} ({version.name} version {version.version}): its stored files "
                f"match the registered digest {version.tags[tags.ARTIFACTS_SHA256]}",
                fg=typer.colors.GREEN)
    if to is not None:
        typer.echo(f"verified copy in {to}: `mlflow models serve -m {to} --env-manager local`")


def reproduce(
    model_uri: ModelUri,
    keep: Annotated[bool, typer.Option(help="Keep the worktree for inspection.")] = False,
    params: ParamsOption = Path("params.yaml"),
    set_: SetOption = None,
) -> None:
    """Rebuild a registered model with `dvc repro` at its commit and data, in a separate git
    worktree, and report whether the rebuilt metrics match. Exit 0 on a match, 1 otherwise."""
    registry_settings(params, set_)
    from tlpipe.registry.reproduce import reproduce as rebuild

    def progress(line: str) -> None:  # the stages as they start; all of it with --verbose
        if options["verbose"] or line.startswith(("Running stage", "Stage '")):
            typer.echo(f"  dvc: {line}")

    typer.echo(f"Rebuilding {model_uri} with dvc repro in a worktree of its commit (minutes):")
    result = rebuild(model_uri, Path.cwd(), keep, progress)
    for note in result.notes:
        typer.secho(f"note: {note}", fg=typer.colors.YELLOW)
    for key in result.registered:
        typer.echo(f"{key:<10} registered {result.registered[key]:.6f}  "
                   f"rebuilt {result.rebuilt[key]:.6f}")
    verdict = "MATCH" if result.matched else "MISMATCH"
    typer.secho(f"{verdict}: {model_uri} rebuilt from commit {result.commit[:12]}",
                fg=typer.colors.GREEN if result.matched else typer.colors.RED)
    raise typer.Exit(0 if result.matched else 1)
