"""Commands about the data alone: `tlpipe validate`, `tlpipe audit`, `tlpipe demo-data`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tlpipe.cli.common import ParamsOption, SetOption, audit_line, load_settings


def validate(
    data_dir: Annotated[Path | None, typer.Argument(
        help="Folder of class folders to check; default: data.root.")] = None,
    html: Annotated[Path | None, typer.Option(
        help="Where to write the HTML report; default: <runs_dir>/validate/report.html.")
    ] = None,
    params: ParamsOption = Path("params.yaml"),
    set_: SetOption = None,
) -> None:
    """Run the data validation gate alone, on the settings' rules. Exit 0 when it passes, 1
    when it fails; either way a markdown report here and an HTML page with a thumbnail of
    every offending image."""
    settings = load_settings(params, set_)
    from tlpipe.data.scan import check_folder
    from tlpipe.paths import data_root, resolve
    from tlpipe.reports.validation import write_html_report

    folder = data_dir or data_root(settings, Path.cwd())
    report, _ = check_folder(folder, settings)
    page = write_html_report(report, html or resolve(
        Path.cwd(), settings.runs_dir / "validate" / "report.html"), folder)
    typer.echo(report.to_markdown())
    typer.echo(f"HTML report: {page}")
    raise typer.Exit(0 if report.passed else 1)


def audit(
    data_dir: Annotated[Path | None, typer.Argument(
        help="Folder of class folders (or train/ val/ [test/]) to audit; default: data.root.")
    ] = None,
    params: ParamsOption = Path("params.yaml"),
    set_: SetOption = None,
) -> None:
    """Audit the images alone, through their own embeddings: label issues (cleanlab),
    near-copies across splits (leaks) and across classes (conflicts), outliers. Runs the
    pipeline's stages up to the audit, with the plain-view features only (stored: a later
    run reuses them), then writes <runs_dir>/audit/audit/report.html with thumbnails, each
    flagged image beside its nearest neighbour, and a map of the embeddings. Exit 0, or 1 when
    validation fails or a finding's verdict (params.yaml, section audit) is fail."""
    settings = load_settings(params, set_, data_dir)
    # The audit reads plain views only: no augmented ones are made for it.
    settings = settings.model_copy(update={
        "outputs_dir": settings.runs_dir / "audit",
        "features": settings.features.model_copy(update={"views": 0})})
    from tlpipe.pipeline import stages_through

    for stage in stages_through("audit"):
        result = stage.module.compute(settings, Path.cwd())
    typer.echo(audit_line(result))


def demo_data(
    from_: Annotated[Path | None, typer.Option(
        "--from", help="Copy from this local copy instead of downloading.")] = None,
    dest: Annotated[Path, typer.Option(help="Where to put it.")] = Path(
        "data/raw/hymenoptera_data"),
) -> None:
    """Get the ants-vs-bees demo data (download, or --from a local copy), checksum-verified."""
    from tlpipe.data.demo import fetch_demo_data, track_with_dvc

    path = fetch_demo_data(dest, from_)
    pointer = track_with_dvc(path)
    typer.echo(f"demo data ready at {path}" + (f", pinned by {pointer}" if pointer else ""))
