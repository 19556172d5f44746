"""Each flow run's headline as Prefect artifacts, so the Prefect UI tells the story without
opening MLflow: the data validation verdict, the audit, the test metrics, the promotion verdict.

Keys start with the registered model's name (Prefect allows lowercase letters, digits and
dashes only), so the Artifacts page keeps one history per model and kind:
``<model>-validation``, ``<model>-audit``, ``<model>-test-metrics``,
``<model>-test-per-class``, ``<model>-promotion``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import httpx
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.logging import get_run_logger

from tlpipe.audit.findings import describe
from tlpipe.config import Params, RegistryConfig
from tlpipe.paths import outputs_for
from tlpipe.promotion.decision import PROMOTING_VERDICTS


def artifact_key(model_name: str, kind: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", f"{model_name}-{kind}".lower()).strip("-")


def _publish(create: Callable[..., object], key: str, description: str, **content) -> None:
    """An artifact is a report: an unreachable Prefect API must not fail the training."""
    try:
        create(key=key, description=description, **content)
    except httpx.HTTPError as error:
        get_run_logger().warning("artifact %s not published: %s", key, error)


def publish_validation(params: Params, project: Path) -> None:
    """The validation verdict, from the report the validate stage writes pass or fail."""
    out = outputs_for(params, project)
    if not out.report_json.is_file():  # the stage failed before it could judge the data
        return
    report = json.loads(out.report_json.read_text())
    failed = [rule["rule"] for rule in report["rules"]
              if not rule["passed"] and rule["action"] == "fail"]
    verdict = f"FAILED ({', '.join(failed)})" if failed else "PASSED"
    _publish(create_markdown_artifact, artifact_key(params.registry.model_name, "validation"),
             f"Data validation {verdict}: {report['kept_files']} of {report['total_files']} "
             "files kept", markdown=out.report_md.read_text())


def publish_audit(params: Params, project: Path, shown: int = 100) -> None:
    """The audit's counts, and its findings as a table (the first ``shown`` of them)."""
    out = outputs_for(params, project)
    if not out.audit_summary.is_file():
        return
    summary = json.loads(out.audit_summary.read_text())
    findings = json.loads(out.audit_findings.read_text())
    _publish(create_table_artifact, artifact_key(params.registry.model_name, "audit"),
             f"Audit of {summary['images']} images: {describe(summary)}",
             table=[{key: row[key] for key in ("path", "split", "label", "finding", "score",
                                               "suggested", "neighbour", "verdict")}
                    for row in findings[:shown]])


def publish_test_metrics(params: Params, evaluation: dict) -> None:
    """The held-out test figures: the headline as markdown, each class as a table row."""
    metrics = json.loads(Path(evaluation["metrics"]).read_text())
    name = params.registry.model_name
    headline = (f"accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}, "
                f"ECE {metrics['ece']:.4f} on {metrics['n_test']} test images")
    warning = evaluation.get("small_test_split")
    _publish(create_markdown_artifact, artifact_key(name, "test-metrics"), headline,
             markdown=f"# Test split: {headline}\n\nImages never used to choose anything "
                      f"(classes: {', '.join(metrics['classes'])})."
                      + (f"\n\n**Warning:** {warning}" if warning else "") + "\n")
    _publish(create_table_artifact, artifact_key(name, "test-per-class"),
             f"Per-class test figures: {headline}",
             table=[{"class": label, **{k: round(v, 4) for k, v in figures.items()}}
                    for label, figures in metrics["per_class"].items()])


def publish_promotion(registry: RegistryConfig, decision: dict) -> None:
    """Promoted or refused, and why, check by check."""
    moved = decision["verdict"] in PROMOTING_VERDICTS
    outcome = (f"v{decision['challenger']} {decision['verdict'].upper()}"
               + (f" to @{registry.champion_alias}" if moved else "")
               + (f" (champion v{decision['champion']})" if decision["champion"] else ""))
    checks = decision.get("gate", {}).get("checks", [])
    lines = [f"# {decision['model_name']} {outcome}", "", decision["reason"], ""]
    if checks:
        lines += ["| check | passed | detail |", "|---|---|---|",
                  *(f"| {c['name']} | {'yes' if c['passed'] else 'NO'} | "
                    f"{c['detail'].replace('|', '/')} |"
                    for c in checks), ""]
    if decision.get("warning"):
        lines += [f"**Warning:** {decision['warning']}", ""]
    if decision.get("run_id"):
        lines.append(f"MLflow run {decision['run_id']}"
                     + (" (decided earlier; reused)" if decision.get("reused") else ""))
    _publish(create_markdown_artifact, artifact_key(registry.model_name, "promotion"),
             f"{outcome}: {decision['summary'] or decision['reason']}"[:500],
             markdown="\n".join(lines) + "\n")
