"""The ``tlpipe`` command line.

Heavy imports happen inside the commands, after the runtime defaults are applied: Prefect and
MLflow read their settings when first imported, and a command that only reads the registry
should not pay for torch. Expected failures (``tlpipe.errors.TlpipeError``) end as their
message and exit code; ``--verbose`` adds the traceback.

Exit codes: 0 done; 1 failed or refused (data validation, the promotion gate, a server or lock,
a rebuilt model that does not match); 2 unusable settings or arguments, including data whose
classes differ from the registered model's.
"""

from __future__ import annotations

import contextlib
import traceback
from pathlib import Path
from typing import Annotated

import click
import typer
import yaml
from typer.core import TyperGroup

from tlpipe.errors import TlpipeError
from tlpipe.runtime import apply_runtime_defaults


class _Commands(TyperGroup):
    """Every command's expected failures end as their message and exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except TlpipeError as error:
            if _options["verbose"]:
                traceback.print_exc()
            typer.secho(str(error), fg=typer.colors.RED, err=True)
            raise typer.Exit(error.exit_code) from None


app = typer.Typer(
    cls=_Commands,
    help="tlpipe: turn folders of labelled images into a validated, tracked, registered "
         "image classifier (Prefect + MLflow + Great Expectations + PyTorch). Start with "
         "`tlpipe init DIR --data FOLDER`, then `cd DIR && tlpipe run`.",
    no_args_is_help=True,
    rich_markup_mode=None,  # help texts name folders like [test/], which rich would eat
    pretty_exceptions_enable=False,
)
_options = {"verbose": False}

ParamsOption = Annotated[Path, typer.Option(
    "--params", "-p", help="Settings file (default: params.yaml here, else built-in defaults).")]
SetOption = Annotated[list[str] | None, typer.Option(
    "--set", "-s", help="Override one setting, e.g. --set finetune.epochs=0 (repeatable).")]


@app.callback()
def _global(verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Show the Python traceback of a failure.")] = False) -> None:
    _options["verbose"] = verbose


def _registry_settings(params: Path, pairs: list[str] | None = None):
    """Settings for the commands that read the registry, with MLflow pointed at the store."""
    apply_runtime_defaults(Path.cwd())
    settings = _load(params, pairs)
    from tlpipe import tracking

    tracking.configure(settings.tracking, Path.cwd())
    return settings


def _flows():
    """The flows, with Prefect's console logging tracebacks only under --verbose."""
    from flows import start

    if not _options["verbose"]:
        start.hide_expected_tracebacks()
    start.start_temporary_server()
    return start


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
    from tlpipe.config import load_params, parse_params

    # Without a params.yaml in the project, the built-in defaults apply; a file named
    # explicitly must exist (load_params says so, naming it).
    if params.is_file() or params != Path("params.yaml"):
        return load_params(params, _overrides(pairs, data))
    return parse_params(_overrides(pairs, data), "built-in defaults")


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="The new project folder (new or empty).")],
    data: Annotated[Path | None, typer.Option(
        help="Your images: one folder per class (or train/ val/ [test/] of class folders).")
    ] = None,
    copy: Annotated[bool, typer.Option(
        "--copy", help="Copy the images instead of hard-linking them (hard links use no "
                       "space; a folder over 2 GiB that cannot be linked needs --copy).")
    ] = False,
) -> None:
    """Start a project on your own images: git and DVC, params.yaml with your classes and a
    model named after the folder, the DVC pipeline, the data pinned by `dvc add`, a first
    commit. Then `cd DIRECTORY && tlpipe run`."""
    from tlpipe.project import init_project

    made = init_project(directory, data, copy)
    typer.secho(f"Project {made.model_name} ready in {made.root}", fg=typer.colors.GREEN)
    if made.classes:
        typer.echo(f"  classes: {', '.join(made.classes)}")
    typer.echo(f"  data: {made.data} ({made.placed}: {made.why})")
    typer.echo(f"Next: cd {directory} && tlpipe run")


@app.command()
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
    apply_runtime_defaults(Path.cwd())
    # A SIGTERM during the flow reaches Prefect's handler, which raises inside the flow: the
    # MLflow run is then marked FAILED with that reason (tests/test_kill_resume.py).
    settings = _load(params, set_, data)
    start = _flows()
    from tlpipe.promotion import PromotionError
    from tlpipe.registry_lock import LockTimeout

    try:
        summary = start.train_flow(settings, str(Path.cwd()))
    except (PromotionError, LockTimeout) as error:
        _fail(f"The model was registered as @{settings.registry.alias}, but the promotion "
              f"could not run: {error}. Run `tlpipe promote` once that is fixed.", 1)
    from tlpipe.ladder import leaderboard_lines

    typer.echo("\nHead candidates, scored on validation data only (the test split chose "
               "nothing):")
    typer.echo("\n".join(leaderboard_lines(summary["head"]["leaderboard"],
                                           settings.head.selection_metric)))
    typer.echo(f"Fine-tuning {summary['finetune']['verdict']}: "
               f"{summary['finetune']['reason']}\n")
    if summary["small_test_split"]:
        typer.secho(f"WARNING: {summary['small_test_split']}", fg=typer.colors.YELLOW)
    model = summary["model"]
    typer.secho(
        f"Registered {model['name']} version {model['version']} as @{model['alias']}: "
        f"test accuracy {summary['test_accuracy']:.4f}, macro-F1 "
        f"{summary['test_macro_f1']:.4f}. MLflow run {summary['run_id']}.", fg=typer.colors.GREEN)
    typer.echo(_audit_line(summary["audit"]))
    typer.echo(f"Outputs (report, plots, model): {summary['outputs']}")
    if summary["promotion"]:
        _print_decision(summary["promotion"])


@app.command()
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
    apply_runtime_defaults(Path.cwd())
    settings = _load(params, set_)
    from tlpipe.paths import data_root, resolve
    from tlpipe.validation import check_folder, write_html_report

    folder = data_dir or data_root(settings, Path.cwd())
    report, _ = check_folder(folder, settings)
    page = write_html_report(report, html or resolve(
        Path.cwd(), settings.runs_dir / "validate" / "report.html"), folder)
    typer.echo(report.to_markdown())
    typer.echo(f"HTML report: {page}")
    raise typer.Exit(0 if report.passed else 1)


def _audit_line(result: dict) -> str:
    from tlpipe.audit import describe

    return f"Audit: {describe(result)}. Report: {result['report']}"


@app.command()
def audit(
    data_dir: Annotated[Path | None, typer.Argument(
        help="Folder of class folders (or train/ val/ [test/]) to audit; default: data.root.")
    ] = None,
    params: ParamsOption = Path("params.yaml"),
    set_: SetOption = None,
) -> None:
    """Audit the images alone, through their own embeddings: label issues (cleanlab),
    near-copies across splits (leaks) and across classes (conflicts), outliers. Runs the
    validation gate and the plain-view features first (stored: a later run reuses them), then
    writes <runs_dir>/audit/audit/report.html with thumbnails, each flagged image beside its
    nearest neighbour, and a map of the embeddings. Exit 0, or 1 when validation fails or a
    finding's verdict (params.yaml, section audit) is fail."""
    apply_runtime_defaults(Path.cwd())
    settings = _load(params, set_, data_dir)
    settings = settings.model_copy(update={"outputs_dir": settings.runs_dir / "audit"})
    from tlpipe.stages import audit as audit_stage
    from tlpipe.stages import features, manifest
    from tlpipe.stages import validate as validate_stage

    project = Path.cwd()
    manifest.compute(settings, project)
    validate_stage.compute(settings, project)
    features.compute(settings, project, plain_only=True)
    typer.echo(_audit_line(audit_stage.compute(settings, project)))


@app.command("demo-data")
def demo_data(
    from_: Annotated[Path | None, typer.Option(
        "--from", help="Copy from this local copy instead of downloading.")] = None,
    dest: Annotated[Path, typer.Option(help="Where to put it.")] = Path(
        "data/raw/hymenoptera_data"),
) -> None:
    """Get the ants-vs-bees demo data (download, or --from a local copy), checksum-verified."""
    from tlpipe.demo_data import fetch_demo_data, track_with_dvc

    path = fetch_demo_data(dest, from_)
    pointer = track_with_dvc(path)
    typer.echo(f"demo data ready at {path}" + (f", pinned by {pointer}" if pointer else ""))


@app.command()
def predict(
    inputs: Annotated[list[Path], typer.Argument(
        help="Image files, or folders (every image file under them is scored).")],
    out: Annotated[Path | None, typer.Option(
        help="Write a CSV (path, label, probability, prob_<class>, error) instead of printing."
    )] = None,
    model: Annotated[str | None, typer.Option(
        help="Registered model name; default: registry.model_name.")] = None,
    alias: Annotated[str | None, typer.Option(
        help="Model alias to load; default: registry.champion_alias.")] = None,
    version: Annotated[int | None, typer.Option(help="Model version (overrides --alias).")] = None,
    top_k: Annotated[int, typer.Option(min=1, help="Labels to show per image.")] = 2,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per model call.")] = 32,
    params: ParamsOption = Path("params.yaml"),
    set_: SetOption = None,
) -> None:
    """Classify images with a registered model (the champion unless told otherwise)."""
    from tlpipe.batch_predict import image_files, predict_files

    missing = [str(p) for p in inputs if not p.exists()]
    if missing:
        _fail(f"not found: {', '.join(missing)}", 2)
    files = image_files(inputs)
    if not files:
        _fail(f"no image files in {', '.join(map(str, inputs))}", 2)
    settings = _registry_settings(params, set_)
    import tempfile

    import mlflow

    from tlpipe.lineage import LineageError, resolve_version
    from tlpipe.model_integrity import download_verified

    name = model or settings.registry.model_name
    uri = (f"models:/{name}/{version}" if version is not None
           else f"models:/{name}@{alias or settings.registry.champion_alias}")
    hint = "`tlpipe models` lists versions and aliases; use --alias challenger before any " \
           "promotion."
    try:
        registered = resolve_version(uri)
    except LineageError as error:
        _fail(f"cannot load {error}. {hint}", 1)
    # Loaded from a checked copy: loading runs the model's code, so nothing unverified runs.
    with tempfile.TemporaryDirectory(prefix="tlpipe-model-") as folder:
        local = download_verified(registered.name, str(registered.version), Path(folder))
        try:
            loaded = mlflow.pyfunc.load_model(str(local), model_config={
                "device": settings.device,
                "features": settings.features.model_dump(mode="json")})
        except Exception as error:
            _fail(f"cannot load {uri}: {error}. {hint}", 1)
        frame = predict_files(loaded, files, batch_size)
    failed = int((frame["error"] != "").sum())
    if out is not None:
        frame.to_csv(out, index=False)
        typer.echo(f"{len(frame) - failed} images scored with {uri} -> {out}"
                   + (f"; {failed} unreadable (see the error column)" if failed else ""))
    else:
        columns = [c for c in frame.columns if c.startswith("prob_")]
        for _, row in frame.iterrows():
            if row["error"]:
                typer.echo(f"{row['path']}: ERROR {row['error']}")
                continue
            ranked = sorted(((row[c], c.removeprefix("prob_")) for c in columns), reverse=True)
            typer.echo(f"{row['path']}: " + ", ".join(
                f"{label} {probability:.3f}" for probability, label in ranked[:top_k]))
    raise typer.Exit(1 if failed else 0)


ModelUri = Annotated[str, typer.Argument(
    help="Registered model, e.g. models:/ants-bees@champion or models:/ants-bees/3.")]


def _print_decision(decision: dict) -> None:
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


@app.command()
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
        _fail("--force needs an explicit VERSION and --reason TEXT (both are recorded)", 2)
    if reason and not force:
        _fail("--reason is only for --force; a gated promotion records the gate's reasons", 2)
    apply_runtime_defaults(Path.cwd())
    settings = _load(params, set_)
    decision = _flows().promote_flow(settings, str(Path.cwd()), version,
                                     reason if force else None)
    _print_decision(decision)
    raise typer.Exit(1 if decision["verdict"] == "refused" else 0)


@app.command()
def rollback(
    reason: Annotated[str, typer.Option(help="Why; recorded with the rollback.")] = "manual",
    params: ParamsOption = Path("params.yaml"),
    set_: SetOption = None,
) -> None:
    """Move the champion alias back to the previous champion, and record it in MLflow."""
    settings = _registry_settings(params, set_)
    from dataclasses import asdict

    from tlpipe import promotion, tracking
    from tlpipe.lineage import git_state

    experiment_id = tracking.configure(settings.tracking, Path.cwd())
    tracking.mark_abandoned_runs(experiment_id)
    decision = promotion.rollback(settings, experiment_id, reason, git_state(Path.cwd()))
    _print_decision(asdict(decision))


@app.command()
def retrain(
    force: Annotated[bool, typer.Option(help="Retrain even if the data has not changed.")
                     ] = False,
    params: ParamsOption = Path("params.yaml"),
    set_: SetOption = None,
) -> None:
    """Retrain if the data changed since the champion was trained (its DVC data version
    against the data now), then run the promotion gate. Exit 0 when skipped or promoted, 1
    when refused or failed. `tlpipe schedule` runs this on a schedule."""
    apply_runtime_defaults(Path.cwd())
    _load(params, set_)  # bad settings fail here, naming the key, before any flow starts
    start = _flows()
    try:
        outcome = start.retrain_flow(str(Path.cwd()), str(params), force, _overrides(set_, None))
    except Exception as error:  # the outcome (failed, and why) is recorded by the flow
        if _options["verbose"]:
            traceback.print_exc()
        _fail(f"retrain failed: {error}", 1)
    colour = typer.colors.GREEN if outcome["outcome"] in ("promoted", "skipped") else \
        typer.colors.RED
    typer.secho(f"{outcome['outcome'].upper()}: {outcome['reason']}", fg=colour)
    raise typer.Exit(0 if outcome["outcome"] in ("promoted", "skipped") else 1)


@app.command()
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
        _fail("give exactly one of --cron or --interval", 2)
    if interval is not None and interval <= 0:
        _fail("--interval must be a positive number of seconds", 2)
    project = Path.cwd()
    apply_runtime_defaults(project)
    _load(params, set_)
    import os

    from tlpipe import stack

    own_server = not os.environ.get("PREFECT_API_URL")
    if own_server:  # before Prefect is imported: it reads PREFECT_API_URL then
        os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
    start = _flows()
    try:  # checked before any server starts
        when = start.retrain_schedule(cron, interval, timezone)
    except ValueError as error:
        _fail(f"--cron {cron!r} / --timezone {timezone!r}: {error}", 2)
    with contextlib.ExitStack() as servers:
        if own_server:
            servers.enter_context(stack.prefect_server(
                Path(os.environ["PREFECT_HOME"]), project / ".prefect" / "logs", port=port))
            typer.echo(f"Prefect server for this project: {os.environ['PREFECT_API_URL'][:-4]}")
        start.serve_retrain(project, params, when, _overrides(set_, None))


stack_app = typer.Typer(help="The team stack on loopback: Prefect server, work pool and worker; "
                             "MLflow server on PostgreSQL; a DVC directory remote.",
                        no_args_is_help=True)
app.add_typer(stack_app, name="stack")


@stack_app.command("up")
def stack_up(
    host: Annotated[str, typer.Option(help="Address the servers bind to.")] = "127.0.0.1",
    prefect_port: int = 4200,
    mlflow_port: int = 5000,
    postgres_port: int = 55432,
    worker: Annotated[bool, typer.Option(help="Start a worker on the work pool.")] = True,
) -> None:
    """Start the stack under .stack/, or restart what of it is down; then `source
    .stack/team.env` to use it."""
    from tlpipe import stack

    state = stack.up(Path.cwd(), stack.Ports(prefect_port, mlflow_port, postgres_port),
                     host, worker)
    if state.restarted:
        typer.secho(f"restarted: {', '.join(state.restarted)}", fg=typer.colors.YELLOW)
    typer.secho(f"Prefect: {state.prefect_api[:-4]}  MLflow: {state.mlflow_uri}  "
                f"work pool: {stack.WORK_POOL}", fg=typer.colors.GREEN)
    typer.echo("Next: source .stack/team.env && prefect --no-prompt deploy --all")


@stack_app.command("down")
def stack_down() -> None:
    """Stop the worker, the servers and PostgreSQL, with all their child processes."""
    from tlpipe import stack

    stopped = stack.down(Path.cwd())
    typer.echo(f"stopped: {', '.join(stopped)}" if stopped else "no stack was running here")


@stack_app.command("status")
def stack_status() -> None:
    """Which parts of the stack are running."""
    from tlpipe import stack

    alive = stack.status(Path.cwd())
    if not alive:
        _fail("no stack here: `tlpipe stack up`", 1)
    for name, running in alive.items():
        typer.echo(f"{name:<15} {'running' if running else 'stopped'}")
    raise typer.Exit(0 if all(alive.values()) else 1)


@app.command()
def models(params: ParamsOption = Path("params.yaml"), set_: SetOption = None) -> None:
    """List the registered versions: aliases, test metrics, data version, promotion verdicts."""
    settings = _registry_settings(params, set_)
    from rich.console import Console
    from rich.table import Table

    from tlpipe.model_versions import version_rows

    _finish_unfinished_decision(settings)
    rows = version_rows(settings.registry)
    if not rows:
        _fail(f"no versions of {settings.registry.model_name!r} yet: run `tlpipe run`", 1)
    import mlflow

    table = Table(title=f"{settings.registry.model_name} in {mlflow.get_tracking_uri()}")
    for column in rows[0]:
        table.add_column(column, overflow="fold", no_wrap=column != "decision")
    for row in rows:
        table.add_row(*row.values())
    Console(width=max(120, Console().width)).print(table)


def _finish_unfinished_decision(settings) -> None:
    """Listing the versions is when a user looks: finish a move a killed promotion left
    part-way, unless a promotion holds the lock right now (it will finish it itself)."""
    from mlflow.tracking import MlflowClient

    from tlpipe.alias_moves import pending_move
    from tlpipe.promotion import finish_unfinished_decision
    from tlpipe.registry_lock import LockTimeout, registry_lock

    if pending_move(MlflowClient(), settings.registry.model_name) is None:
        return  # the usual case: read-only, no lock taken
    try:
        with registry_lock(settings.registry.model_name, 2, settings.promotion.lock_expiry_s):
            recovered = finish_unfinished_decision(settings.registry)
    except LockTimeout:
        typer.secho("a promotion is running: the aliases may be about to change",
                    fg=typer.colors.YELLOW)
        return
    if recovered:
        typer.secho(recovered, fg=typer.colors.YELLOW)


@app.command()
def export(
    model_uri: ModelUri,
    format_: Annotated[str, typer.Option("--format", help="Export format (onnx).")] = "onnx",
    out: Annotated[Path | None, typer.Option(
        help="Output file; default: <name>-v<version>.onnx here.")] = None,
    params: ParamsOption = Path("params.yaml"),
    set_: SetOption = None,
) -> None:
    """Write a registered model as a self-contained ONNX file plus a JSON of its classes and
    preprocessing, after checking ONNX Runtime against PyTorch on real images."""
    if format_ != "onnx":
        _fail(f"--format {format_!r}: only 'onnx' is supported", 2)
    settings = _registry_settings(params, set_)
    from tlpipe.batch_predict import image_files
    from tlpipe.export import export_onnx
    from tlpipe.images import load_rgb
    from tlpipe.lineage import resolve_version
    from tlpipe.paths import data_root
    from tlpipe.promotion import load_version

    version = resolve_version(model_uri)
    model, spec = load_version(version.name, str(version.version))  # verified as it loads
    root = data_root(settings, Path.cwd())
    samples = [load_rgb(p) for p in image_files([root])[:8]] if root.is_dir() else []
    target = out or Path(f"{version.name}-v{version.version}.onnx")
    report = export_onnx(model, spec, target, samples, model_uri)
    typer.secho(f"wrote {report.onnx_file} and {report.metadata_file}", fg=typer.colors.GREEN)
    typer.echo(f"ONNX Runtime vs PyTorch on {report.inputs_checked} inputs "
               f"({len(samples)} real images): max |difference| of probabilities "
               f"{report.max_abs_difference:.2e} (tolerance {report.tolerance:g})")


@app.command()
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
            _fail(f"--to {to}: not a new or empty folder", 2)
    _registry_settings(params, set_)
    import os
    import shutil
    import tempfile

    from tlpipe import tags
    from tlpipe.lineage import resolve_version
    from tlpipe.model_integrity import download_verified

    version = resolve_version(model_uri)
    if to is None:
        with tempfile.TemporaryDirectory(prefix="tlpipe-verify-") as folder:
            download_verified(version.name, str(version.version), Path(folder))
    else:
        # Downloaded beside --to and renamed into place once verified: only a verified copy
        # ever appears there.
        folder = to.parent / f".{to.name}.verifying-{os.getpid()}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        try:
            download_verified(version.name, str(version.version), folder)
            os.replace(folder, to)  # onto an empty folder too
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    typer.secho(f"OK: {model_uri} ({version.name} version {version.version}): its stored files "
                f"match the registered digest {version.tags[tags.ARTIFACTS_SHA256]}",
                fg=typer.colors.GREEN)
    if to is not None:
        typer.echo(f"verified copy in {to}: `mlflow models serve -m {to} --env-manager local`")


@app.command()
def lineage(model_uri: ModelUri, params: ParamsOption = Path("params.yaml"),
            set_: SetOption = None) -> None:
    """Print where a registered model came from: commit, data version, params, metrics."""
    _registry_settings(params, set_)
    from tlpipe.lineage import lineage as find_lineage

    typer.echo("\n".join(find_lineage(model_uri).lines()))


@app.command()
def reproduce(
    model_uri: ModelUri,
    keep: Annotated[bool, typer.Option(help="Keep the worktree for inspection.")] = False,
    params: ParamsOption = Path("params.yaml"),
    set_: SetOption = None,
) -> None:
    """Rebuild a registered model with `dvc repro` at its commit and data, in a separate git
    worktree, and report whether the rebuilt metrics match. Exit 0 on a match, 1 otherwise."""
    _registry_settings(params, set_)
    from tlpipe.lineage import reproduce as rebuild

    result = rebuild(model_uri, Path.cwd(), keep)
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
