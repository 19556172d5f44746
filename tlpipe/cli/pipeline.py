"""Commands that make a project and train in it: `tlpipe init`, `tlpipe run`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tlpipe.cli.common import (
    ParamsOption,
    SetOption,
    audit_line,
    fail,
    load_settings,
    options,
    print_decision,
)

TOP_CANDIDATES = 5  # leaderboard rows shown without --verbose


def init(
    directory: Annotated[Path, typer.Argument(help="The new project folder (new or empty).")],
    data: Annotated[Path | None, typer.Option(
        help="Your images or .txt texts: one folder per class (or train/ val/ [test/] of class "
             "folders); or a CSV or JSON Lines file with 'text' and 'label' columns.")
    ] = None,
    copy: Annotated[bool, typer.Option(
        "--copy", help="Copy the data instead of hard-linking it (hard links use no "
                       "space; a folder over 2 GiB that cannot be linked needs --copy).")
    ] = False,
) -> None:
    """Start a project on your own images or texts: git and DVC, params.yaml with your classes and a
    model named after the folder, the DVC pipeline, the data pinned by `dvc add`, a first
    commit. Then `cd DIRECTORY && tlpipe run`."""
    from tlpipe.ops.project import init_project

    made = init_project(directory, data, copy)
    typer.secho(f"Project {made.model_name} ready in {made.root}", fg=typer.colors.GREEN)
    if made.classes:
        typer.echo(f"  classes: {', '.join(made.classes)}")
    typer.echo(f"  data: {made.data} ({made.placed}: {made.why})")
    for note in made.notes:
        typer.secho(f"  note: {note}", fg=typer.colors.YELLOW)
    typer.echo(f"Next: cd {directory} && tlpipe run")


def run(
    params: ParamsOption = Path("params.yaml"),
    data: Annotated[Path | None, typer.Option(
        help="Image folder (class folders, or train/ val/ [test/]); default: data.root. "
             "The model is still registry.model_name: data with other classes is refused.")
    ] = None,
    set_: SetOption = None,
) -> None:
    """Run the training flow: validate, extract features, train, fine-tune, evaluate, register,
    promote. Outputs go to runs/<run id>/, never to the DVC pipeline's outputs/."""
    # A SIGTERM during the flow reaches Prefect's handler, which raises inside the flow: the
    # MLflow run is then marked FAILED with that reason (tests/test_kill_resume.py).
    settings = load_settings(params, set_, data)
    from tlpipe.flows import start

    start.prepare(show_tracebacks=options["verbose"])
    from tlpipe.promotion.lock import LockTimeout
    from tlpipe.promotion.scoring import PromotionError
    from tlpipe.training.finetune import search_lines
    from tlpipe.training.ladder import leaderboard_lines

    try:
        summary = start.train_flow(settings, str(Path.cwd()))
    except (PromotionError, LockTimeout) as error:
        fail(f"The model was registered as @{settings.registry.alias}, but the promotion "
             f"could not run: {error}. Run `tlpipe promote` once that is fixed.", 1)
    typer.echo("\nHead candidates, scored on validation data only (the test split chose "
               "nothing):")
    board = leaderboard_lines(summary["head"]["leaderboard"], settings.head.selection_metric)
    shown = len(board) if options["verbose"] else 1 + TOP_CANDIDATES
    typer.echo("\n".join(board[:shown]))
    if len(board) > shown:
        typer.echo(f"... {len(board) - shown} more (tlpipe --verbose run, or leaderboard.json "
                   "in the outputs)")
    if len(summary["finetune"].get("search", [])) > 1:
        typer.echo("Fine-tune candidates, halved epoch by epoch on validation data:")
        typer.echo("\n".join(search_lines(summary["finetune"]["search"])))
    typer.echo(f"Fine-tuning {summary['finetune']['verdict']}: "
               f"{summary['finetune']['reason']}\n")
    if summary["small_test_split"]:
        typer.secho(f"WARNING: {summary['small_test_split']}", fg=typer.colors.YELLOW)
    model = summary["model"]
    typer.secho(
        f"Registered {model['name']} version {model['version']} as @{model['alias']}: "
        f"test accuracy {summary['test_accuracy']:.4f}, macro-F1 "
        f"{summary['test_macro_f1']:.4f}. MLflow run {summary['run_id']}.", fg=typer.colors.GREEN)
    typer.echo(audit_line(summary["audit"]))
    typer.echo(f"Outputs (report, plots, model): {summary['outputs']}")
    if summary["uncommitted"]:
        typer.secho(f"note: trained with uncommitted changes to {summary['uncommitted']}: the "
                    "model's git commit does not hold them; commit them (git commit -am ...) "
                    "so its lineage and `tlpipe reproduce` name them", fg=typer.colors.YELLOW)
    if summary["promotion"]:
        print_decision(summary["promotion"])
