"""Commands that use a registered model: `tlpipe predict`, `tlpipe export`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tlpipe.cli.common import ModelUri, ParamsOption, SetOption, fail, registry_settings


def predict(
    inputs: Annotated[list[Path], typer.Argument(
        help="Image files, or folders (every image file under them is scored). For a text "
             "model: .txt files, folders of them, CSV or JSON Lines tables (column "
             "data.text_column), or - for one text per line of standard input.")],
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
    """Classify images or texts with a registered model (the champion unless told otherwise)."""
    import sys

    from tlpipe.serving.batch import STDIN, image_files, predict_files, predict_texts, text_inputs
    from tlpipe.serving.pyfunc import takes_text

    missing = [str(p) for p in inputs if p != STDIN and not p.exists()]
    if missing:
        fail(f"not found: {', '.join(missing)}", 2)
    settings = registry_settings(params, set_)
    from tlpipe.registry.loader import ModelNotFound, loaded_pyfunc, model_uri, resolve_version

    uri = model_uri(model or settings.registry.model_name, version,
                    alias or settings.registry.champion_alias)
    try:
        with loaded_pyfunc(resolve_version(uri), {
                "device": settings.device,
                "features": settings.features.model_dump(mode="json")}) as loaded:
            if takes_text(loaded):
                texts = text_inputs(inputs, settings.data.text_column, settings.text.max_bytes,
                                    sys.stdin.read().splitlines() if STDIN in inputs else [])
                if texts.empty:
                    fail(f"no texts in {', '.join(map(str, inputs))}", 2)
                frame = predict_texts(loaded, texts, batch_size)
            else:
                files = image_files([path for path in inputs if path != STDIN])
                if not files:
                    fail(f"no image files in {', '.join(map(str, inputs))}", 2)
                frame = predict_files(loaded, files, batch_size)
    except ModelNotFound as error:
        fail(f"cannot load {error}. `tlpipe models` lists versions and aliases; use --alias "
             "challenger before any promotion.", 1)
    failed = int((frame["error"] != "").sum())
    if out is not None:
        frame.to_csv(out, index=False)
        typer.echo(f"{len(frame) - failed} scored with {uri} -> {out}"
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


def export(
    model_uri: ModelUri,
    format_: Annotated[str, typer.Option("--format", help="Export format (onnx).")] = "onnx",
    out: Annotated[Path | None, typer.Option(
        help="Output file; default: <name>-v<version>.onnx here.")] = None,
    params: ParamsOption = Path("params.yaml"),
    set_: SetOption = None,
) -> None:
    """Write a registered model as one ONNX file plus a JSON of its classes, checked against
    the served model on real data first. An image model's file takes decoded images (uint8,
    NHWC, RGB or grey, any size) and does the resizing and normalisation itself; a text
    model's takes token ids, and its tokenizer is written beside it."""
    if format_ != "onnx":
        fail(f"--format {format_!r}: only 'onnx' is supported", 2)
    settings = registry_settings(params, set_)
    from tlpipe.data.layout import items_called
    from tlpipe.paths import data_root
    from tlpipe.registry.loader import load_version, resolve_version
    from tlpipe.serving.export import export_onnx, sample_images, sample_texts

    version = resolve_version(model_uri)
    model, spec = load_version(version.name, str(version.version))  # verified as it loads
    root = data_root(settings, Path.cwd())
    samples = (sample_texts(root, settings.data.text_column, settings.text.max_bytes)
               if spec.modality == "text" else sample_images(root))
    target = out or Path(f"{version.name}-v{version.version}.onnx")
    report = export_onnx(model, spec, target, samples, model_uri)
    written = [report.onnx_file, report.metadata_file, report.tokenizer_file or ""]
    typer.secho("wrote " + ", ".join(name for name in written if name), fg=typer.colors.GREEN)
    typer.echo(f"ONNX Runtime vs the served model on {report.inputs_checked} "
               f"{items_called(spec.modality)} "
               f"({len(samples)} from the data): max |difference| of probabilities "
               f"{report.max_abs_difference:.2e} (tolerance {report.tolerance:g})")
