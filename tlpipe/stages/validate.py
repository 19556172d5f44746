"""validate: the Great Expectations gate over the manifest; a failure stops the pipeline.

Writes the report (markdown, JSON and a self-contained HTML page) either way, and the rows kept
for training only on a pass, so no stale "validated" set survives a failed run.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from tlpipe import tags
from tlpipe.config import Params
from tlpipe.data.layout import shown_from
from tlpipe.data.manifest import load_manifest, manifest_fingerprint, save_manifest
from tlpipe.data.validation import ValidationFailed, validate_manifest
from tlpipe.fsio import write_json, write_text
from tlpipe.ops.tracking import RunContext, flat_params, log_to_run_and_parent, stage_run
from tlpipe.paths import data_root, outputs_for
from tlpipe.reports.validation import write_html_report

STAGE = __name__.rpartition(".")[2]


def compute(params: Params, project: Path) -> dict:
    """Run the gate; write the report and the kept rows. Raises ValidationFailed on failure."""
    out = outputs_for(params, project)
    manifest = load_manifest(out.manifest)
    report, kept = validate_manifest(manifest, params.validation,
                                     params.data.expected_classes, params.text)
    write_text(out.report_md, report.to_markdown())
    write_json(out.report_json, report.to_dict())
    write_html_report(report, out.report_html, shown_from(manifest, data_root(params, project)))
    if not report.passed:
        out.validated.unlink(missing_ok=True)
        raise ValidationFailed(report, out.report_html)
    save_manifest(kept, out.validated)
    return {"validated": str(out.validated), "fingerprint": manifest_fingerprint(kept),
            "kept": report.kept_files, "quarantined": len(report.quarantined),
            "report": str(out.report_md), "report_text": report.to_markdown(brief=True)}


def run(context: RunContext, params: Params, project: Path) -> dict:
    out = outputs_for(params, project)
    reports = (out.report_md, out.report_json, out.report_html)
    with stage_run(context, STAGE):
        mlflow.log_params(flat_params("validation", params.validation))
        try:
            result = compute(params, project)
        except ValidationFailed as failure:
            for report in reports:
                log_to_run_and_parent(context, report, "validation")
            print(failure.report.to_markdown(brief=True))
            raise
        for report in reports:
            log_to_run_and_parent(context, report, "validation")
        mlflow.log_artifact(result["validated"], "validation")
        mlflow.log_metrics({"kept_files": result["kept"], "quarantined": result["quarantined"]})
        MlflowClient().set_tag(context.parent_run_id, tags.DATA_FINGERPRINT,
                               result["fingerprint"])
        print(result["report_text"])
        return result
