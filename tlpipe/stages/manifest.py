"""manifest: one row per file under ``data.root`` (content hash, size, format, split)."""

from __future__ import annotations

from pathlib import Path

import mlflow

from tlpipe.config import Params
from tlpipe.data.manifest import FILES_READ, manifest_fingerprint, save_manifest
from tlpipe.data.scan import scan
from tlpipe.ops.tracking import RunContext, flat_params, stage_run
from tlpipe.paths import data_root, outputs_for, resolve

STAGE = __name__.rpartition(".")[2]


def compute(params: Params, project: Path) -> dict:
    out = outputs_for(params, project)
    frame = scan(data_root(params, project), params.data, params.split,
                 params.validation.max_pixels, params.text,
                 state_dir=resolve(project, params.data.state_dir))
    save_manifest(frame, out.manifest)
    return {"manifest": str(out.manifest), "fingerprint": manifest_fingerprint(frame),
            "files": len(frame), "files_read": frame.attrs[FILES_READ],
            "classes": frame.attrs["classes"]}


def run(context: RunContext, params: Params, project: Path) -> dict:
    with stage_run(context, STAGE):
        result = compute(params, project)
        mlflow.log_params({"data.root": str(params.data.root),
                           **flat_params("split", params.split)})
        mlflow.log_metrics({"files": result["files"], "files_read": result["files_read"],
                            "classes": len(result["classes"])})
        mlflow.log_artifact(result["manifest"])
        return result
