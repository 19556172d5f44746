"""The data gate: a Great Expectations suite over the manifest, and a report naming every offender.

Two suites run. The file suite checks each manifest row (decodes, format, size, location,
duplicates); offenders of rules listed in ``validation.quarantine`` are excluded and recorded
instead of failing the gate. The class suite then checks the files that remain (class count,
expected classes, images per class, imbalance), so quarantining can never hide a class that
became too small.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from tlpipe.config import Params, ValidationConfig
from tlpipe.manifest import build_manifest

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


@dataclass
class RuleOutcome:
    rule: str
    level: str  # "file" or "class"
    passed: bool
    action: str  # "fail" or "quarantine"
    description: str
    offenders: list[dict] = field(default_factory=list)  # {"path" or "label", "detail"}


@dataclass
class ValidationReport:
    passed: bool
    total_files: int
    kept_files: int
    outcomes: list[RuleOutcome]

    @property
    def quarantined(self) -> list[dict]:
        return [o for r in self.outcomes if r.action == "quarantine" for o in r.offenders]

    @property
    def failures(self) -> list[RuleOutcome]:
        return [r for r in self.outcomes if not r.passed and r.action == "fail"]

    def to_dict(self) -> dict:
        return {"passed": self.passed, "total_files": self.total_files,
                "kept_files": self.kept_files, "rules": [asdict(r) for r in self.outcomes]}

    def to_markdown(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        lines = [f"# Data validation: {verdict}", "",
                 f"{self.total_files} files scanned, {self.kept_files} kept for training.", ""]
        for outcome in self.outcomes:
            status = "ok" if outcome.passed else (
                "QUARANTINED" if outcome.action == "quarantine" else "FAILED")
            lines.append(f"- [{status}] {outcome.rule}: {outcome.description}")
            for offender in outcome.offenders:
                where = offender.get("path") or f"class {offender.get('label')!r}"
                lines.append(f"    - {where}: {offender['detail']}")
        if not self.passed:
            lines += ["", "Fix or remove the files named above, or list the rule under "
                          "validation.quarantine in params.yaml to exclude offenders instead."]
        return "\n".join(lines) + "\n"


class ValidationFailed(RuntimeError):
    def __init__(self, report: ValidationReport):
        def named(rule: RuleOutcome) -> str:
            where = [o.get("path") or f"class {o.get('label')}" for o in rule.offenders]
            more = f" and {len(where) - 5} more" if len(where) > 5 else ""
            return f"{rule.rule}: {', '.join(where[:5])}{more}"

        super().__init__("data validation failed: " + "; ".join(map(named, report.failures)))
        self.report = report


def _file_frame(manifest: pd.DataFrame) -> pd.DataFrame:
    frame = manifest.copy()
    frame["min_side"] = frame[["width", "height"]].min(axis=1)
    frame["pixels"] = frame["width"] * frame["height"]
    by_hash = frame.groupby("sha256")
    frame["duplicate_conflict"] = (by_hash["label"].transform("nunique") > 1) | (
        by_hash["split"].transform("nunique") > 1)
    return frame


def _class_frame(kept: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    counts = kept["label"].value_counts().reindex(classes, fill_value=0)
    largest = max(int(counts.max()), 1) if len(counts) else 1
    return pd.DataFrame({
        "label": counts.index.astype(str),
        "count": counts.to_numpy(),
        "imbalance": [largest / c if c else float("inf") for c in counts.to_numpy()],
    })


def _file_rules(config: ValidationConfig) -> list[tuple[str, str, object]]:
    import great_expectations.expectations as gxe

    return [
        ("decodable", "every file decodes as an image",
         gxe.ExpectColumnValuesToBeInSet(column="decodable", value_set=[True])),
        ("format", f"format is one of {config.allowed_formats}",
         gxe.ExpectColumnValuesToBeInSet(column="format", value_set=config.allowed_formats)),
        ("min_side", f"shorter side is at least {config.min_side} px",
         gxe.ExpectColumnValuesToBeBetween(column="min_side", min_value=config.min_side)),
        ("max_pixels", f"at most {config.max_pixels} pixels (decompression-bomb guard)",
         gxe.ExpectColumnValuesToBeBetween(column="pixels", max_value=config.max_pixels)),
        ("inside_root", "no symlink leads outside the data folder",
         gxe.ExpectColumnValuesToBeInSet(column="inside_root", value_set=[True])),
        ("duplicates", "identical content never appears in two classes or two splits",
         gxe.ExpectColumnValuesToBeInSet(column="duplicate_conflict", value_set=[False])),
    ]


def _class_rules(config: ValidationConfig, expected: list[str] | None) -> list:
    import great_expectations.expectations as gxe

    rules = [
        ("class_count", "at least two classes",
         gxe.ExpectTableRowCountToBeBetween(min_value=2)),
        ("min_images_per_class", f"every class has at least {config.min_images_per_class} images",
         gxe.ExpectColumnValuesToBeBetween(column="count", min_value=config.min_images_per_class)),
        ("class_imbalance", f"largest class at most {config.max_class_imbalance}x any other",
         gxe.ExpectColumnValuesToBeBetween(column="imbalance",
                                           max_value=config.max_class_imbalance)),
    ]
    if expected:
        rules.append(("expected_classes", f"classes are exactly {sorted(expected)}",
                      gxe.ExpectColumnDistinctValuesToEqualSet(column="label",
                                                               value_set=sorted(expected))))
    return rules


def _run_suite(name: str, rules: list, frame: pd.DataFrame, key: str) -> list[tuple[bool, dict]]:
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False}
    batch = (context.data_sources.add_pandas(name).add_dataframe_asset(name)
             .add_batch_definition_whole_dataframe(name))
    suite = context.suites.add(gx.ExpectationSuite(
        name=name, expectations=[expectation for _, _, expectation in rules]))
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(data=batch, suite=suite, name=name))
    result = definition.run(
        batch_parameters={"dataframe": frame},
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [key]},
    )
    return [(item.success, item.result) for item in result.results]


_FILE_DETAIL = {
    "decodable": lambda row: row["error"] or "cannot be decoded",
    "format": lambda row: f"format {row['format']}",
    "min_side": lambda row: f"{row['width']}x{row['height']} px",
    "max_pixels": lambda row: f"{row['width']}x{row['height']} = {row['pixels']} px",
    "inside_root": lambda row: "symlink to a file outside the data folder",
    "duplicates": lambda row: f"same content (sha256 {row['sha256'][:12]}) as a file "
                              "in another class or split",
}


def validate_manifest(manifest: pd.DataFrame, config: ValidationConfig,
                      expected_classes: list[str] | None = None
                      ) -> tuple[ValidationReport, pd.DataFrame]:
    """Run the gate; return the report and the manifest rows kept for training."""
    files = _file_frame(manifest)
    outcomes: list[RuleOutcome] = []
    excluded: set[str] = set()
    rules = _file_rules(config)
    by_path = files.set_index("path")
    for (rule, description, _), (success, result) in zip(
            rules, _run_suite("files", rules, files, "path"), strict=True):
        paths = [entry["path"] for entry in result.get("unexpected_index_list") or []]
        action = "quarantine" if rule in config.quarantine else "fail"
        offenders = [{"path": p, "detail": _FILE_DETAIL[rule](by_path.loc[p])} for p in paths]
        outcomes.append(RuleOutcome(rule, "file", success, action, description, offenders))
        if action == "quarantine":
            excluded.update(paths)

    kept = manifest[~manifest["path"].isin(excluded)].reset_index(drop=True)
    kept.attrs = dict(manifest.attrs)
    classes = list(manifest.attrs.get("classes") or sorted(manifest["label"].unique()))
    class_table = _class_frame(kept, classes)
    class_rules = _class_rules(config, expected_classes)
    by_label = class_table.set_index("label")
    for (rule, description, _), (success, result) in zip(
            class_rules, _run_suite("classes", class_rules, class_table, "label"), strict=True):
        labels = [entry["label"] for entry in result.get("unexpected_index_list") or []]
        offenders = [{"label": label, "detail": f"{by_label.loc[label, 'count']} images"}
                     for label in labels]
        if rule == "class_count" and not success:
            offenders = [{"label": ",".join(classes) or "(none)",
                          "detail": f"{len(classes)} class folder(s) found; need at least 2"}]
        if rule == "expected_classes" and not success:
            offenders = [{"label": ",".join(classes), "detail": f"found {classes}, expected "
                                                                f"{sorted(expected_classes)}"}]
        outcomes.append(RuleOutcome(rule, "class", success, "fail", description, offenders))

    passed = all(o.passed or o.action == "quarantine" for o in outcomes)
    report = ValidationReport(passed, len(manifest), len(kept), outcomes)
    return report, kept


def check_folder(root: Path, params: Params) -> tuple[ValidationReport, pd.DataFrame]:
    """The gate on a data folder as it is now, in memory: scan it, then validate the scan.
    Returns the report and the rows kept; nothing is written."""
    manifest = build_manifest(root, params.data, params.split, params.validation.max_pixels)
    return validate_manifest(manifest, params.validation, params.data.expected_classes)
