"""audit: label issues, near-copies and outliers, found in the stored plain-view embeddings.

Writes the findings, a summary (DVC metrics), the HTML report and its map, the list of images
quarantined (the head and fine-tuning leave them out) and every audited image with whether
training uses it (the reference a later retrain tests new images against for drift). A finding
whose verdict is ``fail`` stops the pipeline here, before any training, with the report written.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd

from tlpipe.audit.findings import AuditFailed, audit_embeddings, describe
from tlpipe.config import Params
from tlpipe.data.layout import shown_from
from tlpipe.data.manifest import load_manifest
from tlpipe.fsio import write_atomic, write_json
from tlpipe.ops.tracking import RunContext, flat_params, log_to_run_and_parent, stage_run
from tlpipe.paths import data_root, feature_store, outputs_for
from tlpipe.reports.audit import plot_map, write_html_report
from tlpipe.vectors.store import PLAIN_VIEW

STAGE = __name__.rpartition(".")[2]
IMAGE_COLUMNS = ["path", "label", "split", "sha256", "key"]


def compute(params: Params, project: Path) -> dict:
    """Audit the planned images; raises AuditFailed, with every report written, when a
    finding's verdict is fail."""
    out = outputs_for(params, project)
    plan = pd.read_parquet(out.plan)
    images = plan.loc[plan["view"] == PLAIN_VIEW, IMAGE_COLUMNS].reset_index(drop=True)
    vectors = feature_store(params, project).read(images["key"].tolist())
    result = audit_embeddings(images, vectors, params.audit, params.seed)
    summary = result.summary()
    write_json(out.audit_summary, summary)
    write_json(out.audit_findings, result.findings.to_dict(orient="records"))
    plot_map(result, vectors, out.audit_map, params.seed)
    shown = shown_from(load_manifest(out.validated), data_root(params, project))
    write_html_report(result, shown, out.audit_map, out.audit_report, params.audit.report_images)
    if len(result.failures):  # no stale list of what training may use survives a failure
        out.quarantine.unlink(missing_ok=True)
        out.audited_images.unlink(missing_ok=True)
        raise AuditFailed(result, str(out.audit_report))
    quarantined = result.quarantined
    write_json(out.quarantine, quarantined[["path", "split", "finding"]].to_dict(
        orient="records"))
    audited = images.assign(trained=images["split"].isin(["train", "val"])
                            & ~images["path"].isin(quarantined["path"]))
    write_atomic(out.audited_images, lambda path: audited.to_parquet(path, index=False))
    return {**summary, "report": str(out.audit_report)}


def run(context: RunContext, params: Params, project: Path) -> dict:
    out = outputs_for(params, project)
    with stage_run(context, STAGE):
        mlflow.log_params(flat_params("audit", params.audit))
        try:
            result = compute(params, project)
        finally:  # the report of a failed audit is what the user needs most
            for report in (out.audit_report, out.audit_summary, out.audit_findings):
                if report.is_file():
                    log_to_run_and_parent(context, report, "audit")
        mlflow.log_metrics({key: result[key] for key in (
            "label_issues", "leaks", "conflicts", "outliers", "duplicates_within_class",
            "quarantined")})
        mlflow.log_artifact(str(out.audit_map), "audit")
        # What this model is trained on, and how its vectors were made: drift's reference.
        for reference in (out.audited_images, out.preprocessing):
            mlflow.MlflowClient().log_artifact(context.parent_run_id, str(reference), "audit")
        print(f"audit: {describe(result)}; report: {result['report']}")
        return result
