"""The ``tlpipe`` command line.

Heavy imports happen inside the commands, after the runtime defaults are applied: Prefect and
MLflow read their settings when first imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import yaml

from tlpipe.runtime import apply_runtime_defaults

app = typer.Typer(
    help="tlpipe: turn folders of labelled images into a validated, tracked, registered "
         "image classifier (Prefect + MLflow + Great Expectations + PyTorch).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ParamsOption = Annotated[Path, typer.Option("--params", "-p", help="Settings file.")]
SetOption = Annotated[list[str] | None, typer.Option(
    "--set", "-s", help="Override one setting, e.g. --set finetune.epochs=0 (repeatable).")]


def _registry_settings(params: Path):
    """Settings for the commands that read the registry, with MLflow pointed at the store."""
    apply_runtime_defaults(Path.cwd())
    settings = _load(params)
    from tlpipe import tracking

    tracking.configure(settings.tracking, Path.cwd())
    return settings


def _fail(message: str, code: int) -> None:
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _overrides(pairs: list[str] | None, data: Path | None) -> dict:
    overrides: dict = {}
    for pair in pairs or []:
        key, separator, value = pair.partition("=")
        if not separator or not key:
            _fail(f"--set {pair!r}: expected KEY=VALUE, e.g. head.lr=0.001", 2)
        node = overrides
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    if data is not None:
        overrides.setdefault("data", {})["root"] = str(data.resolve())
    return overrides


def _load(params: Path, pairs: list[str] | None = None, data: Path | None = None):
    from tlpipe.config import ConfigError, load_params, parse_params

    try:
        # Without a params.yaml in the project, the built-in defaults apply; a file named
        # explicitly must exist (load_params says so, naming it).
        if params.is_file() or params != Path("params.yaml"):
            return load_params(params, _overrides(pairs, data))
        return parse_params(_overrides(pairs, data), "built-in defaults")
    except ConfigError as error:
        _fail(str(error), 2)


@app.command()
def run(
    params: ParamsOption = Path("params.yaml"),
    data: Annotated[Path | None, typer.Option(
        help="Image folder (class folders, or train/ val/ [test/]); default: data.root.")] = None,
    set_: SetOption = None,
) -> None:
    """Run the training flow: validate, extract features, train, fine-tune, evaluate, register."""
    apply_runtime_defaults(Path.cwd())
    # A SIGTERM during the flow reaches Prefect's handler, which raises inside the flow: the
    # MLflow run is then marked FAILED with that reason (tests/test_kill_resume.py).
    settings = _load(params, set_, data)
    from flows.train import train_flow
    from tlpipe.validation import ValidationFailed

    try:
        summary = train_flow(settings, str(Path.cwd()))
    except ValidationFailed:
        report = settings.outputs_dir / "validation" / "report.md"
        _fail(f"Data validation failed (report above, in {report} and in MLflow); "
              "nothing was trained or registered.", 1)
    model = summary["model"]
    typer.secho(
        f"Registered {model['name']} version {model['version']} as @{model['alias']}: "
        f"test accuracy {summary['test_accuracy']:.4f}, macro-F1 "
        f"{summary['test_macro_f1']:.4f}. MLflow run {summary['run_id']}.", fg=typer.colors.GREEN)


@app.command()
def validate(
    data_dir: Annotated[Path, typer.Argument(help="Folder of class folders to check.")],
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Run the data validation gate alone. Exit 0 when it passes, 1 when it fails."""
    apply_runtime_defaults(Path.cwd())
    settings = _load(params)
    from tlpipe.manifest import DataLayoutError, build_manifest
    from tlpipe.validation import validate_manifest

    try:
        manifest = build_manifest(data_dir, settings.data, settings.split,
                                  settings.validation.max_pixels)
    except DataLayoutError as error:
        _fail(str(error), 1)
    report, _ = validate_manifest(manifest, settings.validation, settings.data.expected_classes)
    typer.echo(report.to_markdown())
    raise typer.Exit(0 if report.passed else 1)


@app.command("demo-data")
def demo_data(
    from_: Annotated[Path | None, typer.Option(
        "--from", help="Copy from this local copy instead of downloading.")] = None,
    dest: Annotated[Path, typer.Option(help="Where to put it.")] = Path(
        "data/raw/hymenoptera_data"),
) -> None:
    """Get the ants-vs-bees demo data (download, or --from a local copy), checksum-verified."""
    from tlpipe.demo_data import DemoDataError, fetch_demo_data, track_with_dvc

    try:
        path = fetch_demo_data(dest, from_)
    except DemoDataError as error:
        _fail(str(error), 1)
    pointer = track_with_dvc(path)
    typer.echo(f"demo data ready at {path}" + (f", pinned by {pointer}" if pointer else ""))


@app.command()
def predict(
    images: Annotated[list[Path], typer.Argument(help="Image files to classify.")],
    model: Annotated[str | None, typer.Option(
        help="Registered model name; default: registry.model_name.")] = None,
    alias: Annotated[str, typer.Option(help="Model alias to load.")] = "challenger",
    version: Annotated[int | None, typer.Option(help="Model version (overrides --alias).")] = None,
    top_k: Annotated[int, typer.Option(min=1, help="Labels to show per image.")] = 2,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Print the top-k labels and probabilities for each image from a registered model."""
    missing = [str(p) for p in images if not p.is_file()]
    if missing:
        _fail(f"not a file: {', '.join(missing)}", 2)
    settings = _registry_settings(params)
    import mlflow
    import pandas as pd

    from tlpipe.serving import IMAGE_COLUMN

    name = model or settings.registry.model_name
    uri = f"models:/{name}/{version}" if version is not None else f"models:/{name}@{alias}"
    try:
        loaded = mlflow.pyfunc.load_model(uri)
    except Exception as error:
        _fail(f"cannot load {uri}: {error}. Run `tlpipe run` first, or check the name/alias.", 1)
    frame = loaded.predict(pd.DataFrame({IMAGE_COLUMN: [p.read_bytes() for p in images]}))
    columns = [c for c in frame.columns if c.startswith("prob_")]
    for path, (_, row) in zip(images, frame.iterrows(), strict=True):
        ranked = sorted(((row[c], c.removeprefix("prob_")) for c in columns), reverse=True)
        shown = ", ".join(f"{label} {probability:.3f}" for probability, label in ranked[:top_k])
        typer.echo(f"{path}: {shown}")


ModelUri = Annotated[str, typer.Argument(
    help="Registered model, e.g. models:/ants-bees@challenger or models:/ants-bees/3.")]




@app.command()
def lineage(model_uri: ModelUri, params: ParamsOption = Path("params.yaml")) -> None:
    """Print where a registered model came from: commit, data version, params, metrics."""
    _registry_settings(params)
    from tlpipe.lineage import LineageError
    from tlpipe.lineage import lineage as find_lineage

    try:
        typer.echo("\n".join(find_lineage(model_uri).lines()))
    except LineageError as error:
        _fail(str(error), 1)


@app.command()
def reproduce(
    model_uri: ModelUri,
    keep: Annotated[bool, typer.Option(help="Keep the worktree for inspection.")] = False,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Rebuild a registered model with `dvc repro` at its commit and data, in a separate git
    worktree, and report whether the rebuilt metrics match. Exit 0 on a match, 1 otherwise."""
    _registry_settings(params)
    from tlpipe.lineage import LineageError
    from tlpipe.lineage import reproduce as rebuild

    try:
        result = rebuild(model_uri, Path.cwd(), keep)
    except LineageError as error:
        _fail(str(error), 1)
    for note in result.notes:
        typer.secho(f"note: {note}", fg=typer.colors.YELLOW)
    for key in result.registered:
        typer.echo(f"{key:<10} registered {result.registered[key]:.6f}  "
                   f"rebuilt {result.rebuilt[key]:.6f}")
    verdict = "MATCH" if result.matched else "MISMATCH"
    typer.secho(f"{verdict}: {model_uri} rebuilt from commit {result.commit[:12]}",
                fg=typer.colors.GREEN if result.matched else typer.colors.RED)
    raise typer.Exit(0 if result.matched else 1)


if __name__ == "__main__":
    app()
