"""How each step's cost grows with the data: 10k and 100k images on this machine.

For each size N, a new tlpipe project (``tlpipe init``) gets a deterministic synthetic
class-folder dataset of N real JPEG files (5 classes, 48 to 160 px a side, shapes and noise
drawn per class; about 3 KB each) and every step is measured in a process of its own: wall
time, time per image, the process's peak RSS, and the files it wrote.

- manifest: a cold scan, then a scan with nothing changed (stat only);
- validation: the Great Expectations gate over the manifest;
- DVC: ``dvc add`` cold and with nothing changed, ``dvc status``, ``dvc push`` to a local
  remote, and a no-op ``dvc repro`` of the data stages (manifest, validate);
- the retrain check: the data version and the decision, as ``tlpipe retrain`` makes them;
- the feature store: writing and reading N vectors of 1280 floats;
- head training: the head stage's ladder on the N stored vectors;
- the incremental path: 1% more images, then the manifest and the feature work for them.

The backbone's forward pass is hours at 100k on 2 cores, so it runs at the first size only
(``--extract``): all its images' plain views with the real backbone. Everywhere else the
store holds synthetic vectors (class means plus noise, under the real cache keys), which is
what the steps that read them need; only the new images of the incremental step go through
the real backbone. The last table gives each step's exponent, log(t_big / t_small) /
log(N_big / N_small): 1 is linear, more is worse than linear.

    .venv/bin/python bench/scale.py [--sizes 10000,100000] [--workdir /tmp/tlpipe-scale]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import REPO

CLASSES = ("heron", "otter", "lichen", "quartz", "tram")
DIM = 1280
# DVC's stage commands run `python -m tlpipe.ops.dvc_stage`: this interpreter's.
ENV = {**os.environ, "PYTHONWARNINGS": "ignore",
       "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


# --- the dataset ---------------------------------------------------------------------------

def _write_images(args: tuple[Path, int, int]) -> None:
    import numpy as np
    from PIL import Image, ImageDraw

    folder, start, stop = args
    for index in range(start, stop):
        label = CLASSES[index % len(CLASSES)]
        rng = np.random.default_rng(index)
        width, height = (int(side) for side in rng.integers(48, 161, size=2))
        base = np.array([(37 * (CLASSES.index(label) + 1) * k) % 256 for k in (1, 2, 3)])
        pixels = np.clip(base + rng.normal(0, 40, (height, width, 3)), 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels)
        draw = ImageDraw.Draw(image)
        for _ in range(3):
            box = sorted(rng.integers(0, width, 2)), sorted(rng.integers(0, height, 2))
            draw.ellipse((box[0][0], box[1][0], box[0][1], box[1][1]),
                         fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        (folder / label).mkdir(parents=True, exist_ok=True)
        image.save(folder / label / f"{label}_{index:07d}.jpg", quality=80)


def make_images(folder: Path, start: int, stop: int) -> None:
    step = max(1, (stop - start) // 64)
    parts = [(folder, first, min(first + step, stop)) for first in range(start, stop, step)]
    with multiprocessing.get_context("spawn").Pool(os.cpu_count()) as pool:
        pool.map(_write_images, parts)


# --- measuring one step in a process of its own ---------------------------------------------

def _child(queue, function, args) -> None:
    if function is not run_command:
        # Imports are not the step's cost: a flow or a scheduler process has them loaded.
        # (Not before a command: a child forked from this process would count its memory.)
        import tlpipe.promotion.retrain
        import tlpipe.stages.features
        import tlpipe.stages.manifest
        import tlpipe.stages.validate  # noqa: F401

    started = time.perf_counter()
    result = function(*args)
    seconds = time.perf_counter() - started
    # A command's own peak (dvc), or this process's for a step run here.
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN if function is run_command
                                 else resource.RUSAGE_SELF).ru_maxrss
    queue.put((seconds, peak_kb / 1024, result))


def file_count(*folders: Path) -> int:
    return sum(len(files) for folder in folders if folder.exists()
               for _, _, files in os.walk(folder))


def measure(rows: list, size: int, step: str, per: int, watched: list[Path], function,
            *args) -> object:
    """Run ``function(*args)`` in a fresh process; record its time, peak RSS and files."""
    before = file_count(*watched)
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(queue, function, args))
    process.start()
    seconds, peak_mb, result = queue.get()
    process.join()
    rows.append({"n": size, "step": step, "seconds": seconds, "per": per,
                 "ms_per_image": 1000 * seconds / max(per, 1), "peak_rss_mb": peak_mb,
                 "files_written": file_count(*watched) - before, "result": result})
    print(f"  {step:<28} {seconds:8.2f} s  {1000 * seconds / max(per, 1):8.3f} ms/img  "
          f"{peak_mb:7.0f} MB  {rows[-1]['files_written']:7d} files  {result}", flush=True)
    return result


def command(*arguments: str, cwd: Path) -> str:
    done = subprocess.run(list(arguments), cwd=cwd, env=ENV, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{arguments}: {done.stderr[-2000:]}")
    return done.stdout.strip()[-200:]


def dvc(project: Path, *arguments: str) -> str:
    return command(str(Path(sys.executable).with_name("dvc")), *arguments, cwd=project)


# --- the steps (each runs in its own process) -----------------------------------------------

def params_of(project: Path):
    from tlpipe.params_file import load_params

    return load_params(project / "params.yaml")


def scan(project: Path) -> dict:
    from tlpipe.stages import manifest

    result = manifest.compute(params_of(project), project)
    return {"files": result["files"], "read": result["files_read"]}


def validate(project: Path) -> dict:
    from tlpipe.stages import validate

    result = validate.compute(params_of(project), project)
    return {"kept": result["kept"]}


def retrain_check(project: Path) -> dict:
    from tlpipe.ops.tracking import configure
    from tlpipe.promotion.retrain import current_data_version, plan_retrain, registered_state

    params = params_of(project)
    configure(params.tracking, project)
    data = current_data_version(params, project)
    plan = plan_retrain(data.md5, *registered_state(params.registry))
    return {"md5": data.md5[:12], "retrain": plan.retrain}


def _synthetic_vectors(plan, seed: int = 0):
    import numpy as np

    means = np.random.default_rng(seed).standard_normal((len(CLASSES), DIM)).astype(np.float32)
    noise = np.random.default_rng(seed + 1).standard_normal((len(plan), DIM), dtype=np.float32)
    labels = np.array([CLASSES.index(label) for label in plan["label"]])
    return means[labels] * 0.05 + noise  # about 90% separable, as real features might be


def store_write(project: Path) -> dict:
    """The real plain-view keys of every image, with synthetic vectors."""
    from tlpipe.data.manifest import load_manifest
    from tlpipe.paths import feature_store, outputs_for
    from tlpipe.stages.features import feature_spec
    from tlpipe.vectors.backbones import backbone_for
    from tlpipe.vectors.features import plan_views

    params = params_of(project)
    manifest = load_manifest(outputs_for(params, project).validated)
    plan = plan_views(manifest, 0, feature_spec(params, backbone_for(params.backbone, project)))
    plan.to_parquet(outputs_for(params, project).root / "plain_plan.parquet")
    vectors = _synthetic_vectors(plan)
    with feature_store(params, project).writer() as writer:
        writer.add(plan["key"].tolist(), vectors)
    return {"vectors": len(plan)}


def store_read(project: Path) -> dict:
    import pandas as pd

    from tlpipe.paths import feature_store, outputs_for

    params = params_of(project)
    plan = pd.read_parquet(outputs_for(params, project).root / "plain_plan.parquet")
    store = feature_store(params, project)
    vectors = store.read(plan["key"].tolist())
    return {"shape": list(vectors.shape), "chunks": len(store.chunks())}


def train_head(project: Path) -> dict:
    import pandas as pd

    from tlpipe.devices import CPU
    from tlpipe.paths import feature_store, outputs_for
    from tlpipe.training.cached import Features
    from tlpipe.training.heads import class_order
    from tlpipe.training.ladder import fit, score, select

    params = params_of(project)
    plan = pd.read_parquet(outputs_for(params, project).root / "plain_plan.parquet")
    classes = class_order(plan["label"])
    store = feature_store(params, project)
    train, val = (Features.from_plan(plan, store, split, classes) for split in ("train", "val"))
    chosen, board = select(train, val, len(classes), params.head, params.seed, CPU)
    head, _, _ = fit(chosen, train, val, len(classes), params.head, params.seed, CPU)
    return {"chosen": chosen.name, "val": round(score(head, val, "macro_f1"), 3),
            "candidates": len(board)}


def extract(project: Path, limit: int | None) -> dict:
    """The real backbone over the plain views the store lacks (onnxruntime, 2 threads)."""
    from tlpipe.data.manifest import load_manifest
    from tlpipe.devices import CPU
    from tlpipe.paths import data_root, feature_store, outputs_for
    from tlpipe.stages.features import feature_spec
    from tlpipe.vectors.backbones import backbone_for
    from tlpipe.vectors.features import extract_features, plan_views

    params = params_of(project)
    backbone = backbone_for(params.backbone, project)
    manifest = load_manifest(outputs_for(params, project).validated)
    plan = plan_views(manifest if limit is None else manifest.head(limit), 0,
                      feature_spec(params, backbone))
    stats = extract_features(plan, data_root(params, project), backbone, params.features,
                             params.augment, params.seed, feature_store(params, project), CPU)
    return {"computed": stats.computed, "stored": stats.cached}


def run_command(project: Path, *arguments: str) -> str:
    return command(*arguments, cwd=project)


# --- one size ------------------------------------------------------------------------------

def bench_size(size: int, workdir: Path, extract_at: int, rows: list) -> None:
    from tlpipe.ops.project import init_project

    project = workdir / f"n{size}"
    shutil.rmtree(project, ignore_errors=True)
    new = init_project(project)
    data = project / new.data
    dvc_tool = str(Path(sys.executable).with_name("dvc"))
    started = time.perf_counter()
    make_images(data, 0, size)
    print(f"\nN = {size}: {size} JPEGs in {time.perf_counter() - started:.0f} s "
          f"({sum(p.stat().st_size for p in data.rglob('*.jpg')) / size / 1024:.1f} KB each)",
          flush=True)
    cache = project / ".cache"
    dvc_cache = project / ".dvc" / "cache"
    outputs = project / "outputs"
    step = lambda name, per, watched, function, *args: measure(  # noqa: E731
        rows, size, name, per, watched, function, *args)

    step("manifest (cold)", size, [cache, outputs], scan, project)
    step("manifest (no change)", size, [cache, outputs], scan, project)
    step("validation", size, [outputs], validate, project)
    step("dvc add (cold)", size, [dvc_cache], run_command, project, dvc_tool, "add", "-q",
         str(new.data))
    command("git", "add", f"{new.data}.dvc", str(new.data.parent / ".gitignore"), cwd=project)
    command("git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "data",
            cwd=project)
    step("dvc add (no change)", size, [dvc_cache], run_command, project, dvc_tool, "add", "-q",
         str(new.data))
    step("dvc status (data)", size, [], run_command, project, dvc_tool, "status",
         f"{new.data}.dvc")
    remote = workdir / f"remote{size}"
    shutil.rmtree(remote, ignore_errors=True)
    dvc(project, "remote", "add", "-d", "bench", str(remote))
    step("dvc push (cold)", size, [remote], run_command, project, dvc_tool, "push", "-q")
    retrain_check(project)  # the tracking store's first use creates it: not part of a check
    step("retrain check (no change)", size, [], retrain_check, project)
    dvc(project, "repro", "-q", "validate")
    step("dvc repro no-op (data)", size, [], run_command, project, dvc_tool, "repro",
         "validate")
    step("feature store write", size, [cache], store_write, project)
    step("feature store read", size, [], store_read, project)
    step("head training (ladder)", size, [], train_head, project)
    if size == extract_at:
        # The real backbone over images the store has no real vector for: a store of its own.
        real = project / "real-store"
        with open(project / "params.yaml") as handle:
            text = handle.read()
        (project / "params.yaml").write_text(text.replace(
            "store: .cache/features", f"store: {real}"))
        step("extraction (real backbone)", size, [real], extract, project, None)
        (project / "params.yaml").write_text(text)
    added = max(1, size // 100)
    make_images(data, size, size + added)
    step("manifest (+1%)", added, [cache, outputs], scan, project)
    step("validation (+1%)", added, [outputs], validate, project)
    step("features (+1%, real backbone)", added, [cache], extract, project, None)
    step("dvc add (+1%)", added, [dvc_cache], run_command, project, dvc_tool, "add", "-q",
         str(new.data))


def exponents(rows: list, sizes: list[int]) -> None:
    small, big = sizes[0], sizes[-1]
    print(f"\n| step | {small} s | {big} s | ms/img at {small} | ms/img at {big} | "
          f"peak RSS MB at {big} | files at {big} | exponent |")
    print("|---|---|---|---|---|---|---|---|")
    for step in dict.fromkeys(row["step"] for row in rows):
        at = {row["n"]: row for row in rows if row["step"] == step}
        if small not in at or big not in at:
            continue
        a, b = at[small], at[big]
        ratio = (b["seconds"] / a["seconds"]) if a["seconds"] > 0 else float("nan")
        exponent = math.log(ratio) / math.log(b["per"] / a["per"]) if b["per"] != a["per"] \
            else float("nan")
        print(f"| {step} | {a['seconds']:.2f} | {b['seconds']:.2f} | {a['ms_per_image']:.3f} | "
              f"{b['ms_per_image']:.3f} | {b['peak_rss_mb']:.0f} | {b['files_written']} | "
              f"{exponent:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tlpipe-scale"))
    parser.add_argument("--extract", type=int, default=None,
                        help="the size at which the real backbone runs over every image "
                             "(default: the first)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows: list = []
    for size in sizes:
        bench_size(size, args.workdir, args.extract or sizes[0], rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=str))
    if len(sizes) > 1:
        exponents(rows, sizes)
    print(f"\n{os.cpu_count()} cores; the projects are left in {args.workdir}", flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
