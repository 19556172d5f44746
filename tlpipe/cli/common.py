"""What the command groups share: the common options, loading settings, and printing a
promotion decision."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tlpipe.ops.runtime import apply_runtime_defaults

options = {"verbose": False}  # set by the global --verbose

ParamsOption = Annotated[Path, typer.Option(
    "--params", "-p", help="Settings file (default: params.yaml here, else built-in defaults).")]
SetOption = Annotated[list[str] | None, typer.Option(
    "--set", "-s", help="Override one setting, e.g. --set finetune.epochs=0 (repeatable).")]
ModelUri = Annotated[str, typer.Argument(
    help="Registered model, e.g. models:/ants-bees@champion or models:/ants-bees/3.")]


def fail(message: str, code: int) -> None:
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def load_settings(params: Path, pairs: list[str] | None = None, data: Path | None = None):
    """The settings of this project: ``params`` with ``--set`` pairs and ``--data`` on top.
    Without a params.yaml in the project the built-in defaults apply; a file named explicitly
    must exist (load_params says so, naming it)."""
    apply_runtime_defaults(Path.cwd())
    from tlpipe.params_file import deep_merge, load_params, overrides_from, parse_params

    overrides = overrides_from(pairs)
    if data is not None:
        overrides = deep_merge(overrides, {"data": {"root": str(data.resolve())}})
    if params.is_file() or params != Path("params.yaml"):
        return load_params(params, overrides)
    return parse_params(overrides, "built-in defaults")


def registry_settings(params: Path, pairs: list[str] | None = None):
    """Settings for the commands that read the registry, with MLflow pointed at the store."""
    settings = load_settings(params, pairs)
    from tlpipe.ops import tracking

    tracking.configure(settings.tracking, Path.cwd())
    return settings


def print_decision(decision: dict) -> None:
    verdict = decision["verdict"]
    colour = {"promoted": typer.colors.GREEN, "forced": typer.colors.YELLOW,
              "rollback": typer.colors.YELLOW, "refused": typer.colors.RED}.get(verdict)
    typer.secho(f"{decision['model_name']} v{decision['challenger']}: {verdict.upper()}",
                fg=colour, bold=True)
    typer.echo(f"  {decision['reason']}")
    if decision.get("warning"):
        typer.secho(f"  WARNING: {decision['warning']}", fg=typer.colors.YELLOW)
    for check in decision.get("gate", {}).get("checks", []):
        typer.echo(f"  [{'pass' if check['passed'] else 'FAIL'}] {check['name']}: "
                   f"{check['detail']}")
    if decision.get("run_id"):
        typer.echo(f"  recorded in MLflow run {decision['run_id']}"
                   + (" (an identical earlier decision)" if decision.get("reused") else ""))


def audit_line(result: dict) -> str:
    from tlpipe.audit.findings import describe

    return f"Audit: {describe(result)}. Report: {result['report']}"
