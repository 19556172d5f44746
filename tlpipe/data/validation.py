"""The data gate: a Great Expectations suite over the manifest, and a report naming every offender
(its HTML page is ``tlpipe.reports.validation``).

Two suites run. The file suite checks each manifest row (decodes, format, size, location,
duplicates); offenders of rules listed in ``validation.quarantine`` are excluded and recorded
instead of failing the gate. The class suite then checks the files that remain (class count,
expected classes, images per class, imbalance), so quarantining can never hide a class that
became too small.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import get_args

import pandas as pd

from tlpipe.config import RuleName, TextConfig, ValidationConfig
from tlpipe.data.layout import SPLITS, items_called, modality
from tlpipe.errors import TlpipeError

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


@dataclass
class RuleOutcome:
    rule: str
    level: str  # "file" or "class"
    passed: bool
    action: str  # "fail" or "quarantine"
    description: str
    offenders: list[dict] = field(default_factory=list)  # {"path" or "label", "detail"}

    @property
    def status(self) -> str:
        return "ok" if self.passed else (
            "QUARANTINED" if self.action == "quarantine" else "FAILED")


QUARANTINABLE = frozenset(get_args(RuleName))

# What to change for each rule, naming the params.yaml setting that controls it.
_FIX = {
    "decodable": "re-export or delete these files",
    "format": "convert them to an allowed format, or add theirs to "
              "`validation.allowed_formats` in params.yaml",
    "min_side": "use larger images, or lower `validation.min_side` in params.yaml",
    "max_pixels": "downscale them, or raise `validation.max_pixels` in params.yaml if you "
                  "trust them",
    "inside_root": "copy the linked files into the data folder instead of linking to them",
    "duplicates": "keep one copy, in the right class folder",
    "near_duplicates": "keep one of the texts that differ only in case, accents, punctuation "
                       "or spacing, in the right class",
    "text_length": "fix or remove these texts, or change `text.min_words` / `text.max_words` "
                   "in params.yaml",
    "class_count": "give the data folder at least two class folders",
    "min_images_per_class": "add {unit} to these classes, or lower "
                            "`validation.min_images_per_class` in params.yaml",
    "split_coverage": "add {unit} to these classes (each one's split comes from its content "
                      "hash, so more {unit} reach every split), or give the data its own "
                      "val/ and test/ folders",
    "class_imbalance": "add {unit} to the small classes, or raise "
                       "`validation.max_class_imbalance` in params.yaml",
    "expected_classes": "rename the class folders, or change `data.expected_classes` in "
                        "params.yaml",
    "class_names": "rename these folders; a hidden folder (.name) you mean to leave out can "
                   "be named in `data.ignored_names` in params.yaml",
}
# Class names become MLflow metric names (at most 250 characters with a prefix), file names
# and JSON keys: a name that breaks them must fail here, not after training.
MAX_CLASS_NAME_CHARS = 100


def class_name_problem(name: str) -> str:
    """Why ``name`` cannot be a class, or "" if it can."""
    if name.startswith("."):
        return "a hidden folder (its name starts with '.') holding images: not read as a class"
    if len(name) > MAX_CLASS_NAME_CHARS:
        return f"{len(name)} characters; a class name has at most {MAX_CLASS_NAME_CHARS}"
    if re.search(r"[\\\x00-\x1f\x7f]", name):
        return "holds a backslash or a control character"
    return ""


def fix_hint(outcome: RuleOutcome, unit: str = "images") -> str:
    """How to fix a failed rule; quarantining is offered only where a file can be left out."""
    hint = _FIX[outcome.rule].format(unit=unit)
    if outcome.rule in QUARANTINABLE:
        hint += (f"; or add `{outcome.rule}` to `validation.quarantine` in params.yaml to "
                 "exclude these files and train on the rest")
    return hint


def files_phrase(count: int) -> str:
    return f"{count} file" if count == 1 else f"{count} files"


def offender_name(offender: dict) -> str:
    return offender.get("path") or f"class {offender.get('label')!r}"


@dataclass
class ValidationReport:
    passed: bool
    total_files: int
    kept_files: int
    outcomes: list[RuleOutcome]
    class_counts: dict[str, int] = field(default_factory=dict)  # after quarantine
    unit: str = "images"  # what the files are: "images" or "texts"

    @property
    def quarantined(self) -> list[dict]:
        return [o for r in self.outcomes if r.action == "quarantine" for o in r.offenders]

    @property
    def failures(self) -> list[RuleOutcome]:
        return [r for r in self.outcomes if not r.passed and r.action == "fail"]

    @property
    def verdict(self) -> str:
        return "PASSED" if self.passed else "FAILED"

    @property
    def summary(self) -> str:
        if not self.passed:
            return (f"{self.total_files} files scanned. Validation failed: nothing will be "
                    "trained until the failures below are fixed.")
        excluded = self.total_files - self.kept_files
        return (f"{self.total_files} files scanned, {self.kept_files} kept for training"
                + (f", {excluded} quarantined." if excluded else "."))

    def to_dict(self) -> dict:
        return {"passed": self.passed, "total_files": self.total_files,
                "kept_files": self.kept_files, "class_counts": self.class_counts,
                "rules": [asdict(r) for r in self.outcomes]}

    def to_markdown(self, listed: int = 10, brief: bool = False) -> str:
        """The report for terminals and MLflow: at most ``listed`` offenders per rule;
        ``brief`` (the console): the rules that passed cleanly on one line."""
        lines = [f"# Data validation: {self.verdict}", "", self.summary, ""]
        if self.class_counts:
            lines += [f"{self.unit.capitalize()} per class: " + ", ".join(
                f"{label} {count}" for label, count in self.class_counts.items()), ""]
        clean = [o.rule for o in self.outcomes if o.status == "ok" and not o.offenders]
        if brief and clean:
            lines.append(f"- [ok] {len(clean)} rules: {', '.join(clean)}")
        for outcome in self.outcomes:
            if brief and outcome.rule in clean:
                continue
            files = f" ({files_phrase(len(outcome.offenders))})" if (
                outcome.level == "file" and outcome.offenders) else ""
            lines.append(f"- [{outcome.status}] {outcome.rule}: {outcome.description}{files}")
            if outcome.status == "FAILED":
                lines.append(f"    - fix: {fix_hint(outcome, self.unit)}")
            lines += [f"    - {offender_name(o)}: {o['detail']}"
                      for o in outcome.offenders[:listed]]
            if len(outcome.offenders) > listed:
                lines.append(f"    - and {len(outcome.offenders) - listed} more "
                             "(all in report.json / report.html)")
        if brief:
            lines = [line for line in lines if line]
        return "\n".join(lines) + "\n"


class ValidationFailed(TlpipeError):
    def __init__(self, report: ValidationReport, page: Path | None = None):
        def named(rule: RuleOutcome) -> str:
            where = [offender_name(o) for o in rule.offenders]
            more = f" and {len(where) - 5} more" if len(where) > 5 else ""
            return f"{rule.rule}: {', '.join(where[:5])}{more}"

        super().__init__("data validation failed: " + "; ".join(map(named, report.failures))
                         + (f". Report with thumbnails: {page}" if page else "")
                         + ". Nothing was trained or registered.")
        self.report = report


def _file_frame(manifest: pd.DataFrame) -> pd.DataFrame:
    frame = manifest.copy()
    if modality(manifest) == "image":
        frame["min_side"] = frame[["width", "height"]].min(axis=1)
        frame["pixels"] = frame["width"] * frame["height"]
    frame["duplicate_conflict"] = _conflicting(frame, "sha256")
    if modality(manifest) == "text":
        frame["near_duplicate_conflict"] = _conflicting(frame, "normalised_sha256")
    return frame


def _conflicting(frame: pd.DataFrame, key: str) -> pd.Series:
    """Rows whose ``key`` recurs under another label or in another split."""
    groups = frame.groupby(key, dropna=True)
    conflict = (groups["label"].transform("nunique") > 1) | (
        groups["split"].transform("nunique") > 1)
    return conflict.reindex(frame.index, fill_value=False).astype(bool)


def _class_frame(kept: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    per_split = pd.crosstab(kept["label"], kept["split"]).reindex(
        index=classes, columns=list(SPLITS), fill_value=0)
    counts = per_split.sum(axis=1)
    largest = max(int(counts.max()), 1) if len(counts) else 1
    return pd.DataFrame({
        "label": counts.index.astype(str),
        "count": counts.to_numpy(),
        "imbalance": [largest / c if c else float("inf") for c in counts.to_numpy()],
        "emptiest_split": per_split.min(axis=1).to_numpy(),
        "splits": [", ".join(f"{split} {row[split]}" for split in SPLITS)
                   for _, row in per_split.iterrows()],
    })


def _text_rules(text: TextConfig) -> list[tuple[str, str, object]]:
    import great_expectations.expectations as gxe

    return [
        ("decodable", "every file is a UTF-8 text with words in it",
         gxe.ExpectColumnValuesToBeInSet(column="decodable", value_set=[True])),
        ("text_length", f"every text has {text.min_words} to {text.max_words} words",
         gxe.ExpectColumnValuesToBeBetween(column="words", min_value=text.min_words,
                                           max_value=text.max_words)),
        ("inside_root", "no symlink leads outside the data folder",
         gxe.ExpectColumnValuesToBeInSet(column="inside_root", value_set=[True])),
        ("duplicates", "the same text never appears in two classes or two splits",
         gxe.ExpectColumnValuesToBeInSet(column="duplicate_conflict", value_set=[False])),
        ("near_duplicates", "texts equal but for case, accents, punctuation or spacing never "
         "appear in two classes or two splits",
         gxe.ExpectColumnValuesToBeInSet(column="near_duplicate_conflict", value_set=[False])),
    ]


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


def _class_rules(config: ValidationConfig, expected: list[str] | None, unit: str) -> list:
    import great_expectations.expectations as gxe

    rules = [
        ("class_count", "at least two classes",
         gxe.ExpectTableRowCountToBeBetween(min_value=2)),
        ("min_images_per_class", f"every class has at least {config.min_images_per_class} {unit}",
         gxe.ExpectColumnValuesToBeBetween(column="count", min_value=config.min_images_per_class)),
        ("class_imbalance", f"largest class at most {config.max_class_imbalance}x any other",
         gxe.ExpectColumnValuesToBeBetween(column="imbalance",
                                           max_value=config.max_class_imbalance)),
        # A class missing from test would be scored as 0 of 0 (macro-F1 0.5 with accuracy
        # 1.0 was seen); missing from val, it would never count while choosing the head.
        ("split_coverage", f"every class has train, val and test {unit}",
         gxe.ExpectColumnValuesToBeBetween(column="emptiest_split", min_value=1)),
    ]
    if expected:
        rules.append(("expected_classes", f"classes are exactly {sorted(expected)}",
                      gxe.ExpectColumnDistinctValuesToEqualSet(column="label",
                                                               value_set=sorted(expected))))
    return rules


def _name_expectation():
    import great_expectations.expectations as gxe

    return gxe.ExpectColumnValuesToBeInSet(column="problem", value_set=[""])


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
    "text_length": lambda row: f"{row['words']} words",
    "near_duplicates": lambda row: "the same text, but for case, accents, punctuation or "
                                   "spacing, as one in another class or split",
}


def validate_manifest(manifest: pd.DataFrame, config: ValidationConfig,
                      expected_classes: list[str] | None = None,
                      text: TextConfig | None = None) -> tuple[ValidationReport, pd.DataFrame]:
    """Run the gate; return the report and the manifest rows kept for training."""
    files = _file_frame(manifest)
    outcomes: list[RuleOutcome] = []
    excluded: set[str] = set()
    kind = modality(manifest)
    unit = items_called(kind)
    rules = _text_rules(text or TextConfig()) if kind == "text" else _file_rules(config)
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
    class_rules = _class_rules(config, expected_classes, unit)
    by_label = class_table.set_index("label")
    for (rule, description, _), (success, result) in zip(
            class_rules, _run_suite("classes", class_rules, class_table, "label"), strict=True):
        labels = [entry["label"] for entry in result.get("unexpected_index_list") or []]
        offenders = [{"label": label, "detail": f"{by_label.loc[label, 'count']} {unit}"
                      + (f" ({by_label.loc[label, 'splits']})"
                         if rule == "split_coverage" else "")
                      + (f"; the largest class has {by_label.loc[label, 'imbalance']:.1f}x as "
                         f"many (limit {config.max_class_imbalance:g})"
                         if rule == "class_imbalance" else "")}
                     for label in labels]
        if rule == "class_count" and not success:
            offenders = [{"label": ",".join(classes) or "(none)",
                          "detail": f"{len(classes)} class folder(s) found; need at least 2"}]
        if rule == "expected_classes" and not success:
            missing = sorted(set(expected_classes) - set(classes))
            unexpected = sorted(set(classes) - set(expected_classes))
            offenders = (
                [{"label": label, "detail": "expected, but no such class folder"}
                 for label in missing]
                + [{"label": label, "detail": "class folder not in data.expected_classes"}
                   for label in unexpected])
        outcomes.append(RuleOutcome(rule, "class", success, "fail", description, offenders))

    names = pd.DataFrame({"label": [*classes, *manifest.attrs.get("hidden_folders", [])]})
    names["problem"] = [class_name_problem(name) for name in names["label"]]
    description = (f"class folder names are usable: at most {MAX_CLASS_NAME_CHARS} characters, "
                   "no backslash or control character, no images in hidden folders")
    name_rule = [("class_names", description, _name_expectation())]
    [(success, result)] = _run_suite("names", name_rule, names, "label")
    problems = names.set_index("label")["problem"]
    outcomes.append(RuleOutcome("class_names", "class", success, "fail", description, [
        {"label": entry["label"], "detail": problems[entry["label"]]}
        for entry in result.get("unexpected_index_list") or []]))

    passed = all(o.passed or o.action == "quarantine" for o in outcomes)
    counts = {label: int(count) for label, count in by_label["count"].items()}
    report = ValidationReport(passed, len(manifest), len(kept), outcomes, counts, unit)
    return report, kept


#END
