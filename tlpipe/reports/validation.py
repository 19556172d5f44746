"""The validation report as one self-contained HTML page: each check, and a thumbnail of every
offending or quarantined file."""

from __future__ import annotations

import html
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tlpipe.data.validation import (
    RuleOutcome,
    ValidationReport,
    files_phrase,
    fix_hint,
    offender_name,
)
from tlpipe.fsio import write_text
from tlpipe.reports.thumbnails import Source, picture_html

MAX_THUMBNAILS = 500  # keeps the page a few MB whatever the number of offenders
# Never decoded for the page: broken, a decompression bomb, or a file outside the data folder.
_NOT_SHOWN = {"decodable", "max_pixels", "inside_root"}

_CSS = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#222}
.passed{color:#1a7f37}.failed{color:#cf222e}.quarantined{color:#9a6700}
table{border-collapse:collapse;margin:1rem 0}
td,th{border:1px solid #ccc;padding:.3rem .6rem;text-align:left;vertical-align:top}
td:first-child{font-weight:bold}
.grid{display:flex;flex-wrap:wrap;gap:.75rem}
figure{margin:0;width:168px;border:1px solid #ddd;padding:.4rem;font-size:.8rem;
overflow-wrap:anywhere}
figure img{display:block;margin:auto;max-width:128px;max-height:128px}
figure ul{padding-left:1rem;margin:.3rem 0}
.placeholder{width:128px;height:128px;margin:auto;display:flex;align-items:center;
justify-content:center;text-align:center;background:#f6f8fa;border:1px dashed #999;
font-size:.75rem;overflow:hidden}
"""


def _html_text(text: str) -> str:
    """Escaped text, with the `settings` the hints name set as code."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _offendingfiles_phrase(report: ValidationReport) -> dict[str, list[tuple[RuleOutcome, str]]]:
    """Each offending or quarantined file once, with every rule it broke and why."""
    files: dict[str, list[tuple[RuleOutcome, str]]] = {}
    for outcome in report.outcomes:
        if outcome.level == "file":
            for offender in outcome.offenders:
                files.setdefault(offender["path"], []).append((outcome, offender["detail"]))
    return files


def _picture(root: Source, path: str, broken: list[tuple[RuleOutcome, str]]) -> str:
    reason = next((detail for outcome, detail in broken if outcome.rule in _NOT_SHOWN), None)
    if reason is None:
        try:
            return picture_html(root, path)
        except Exception as error:  # changed or gone since the scan: the page still gets written
            reason = f"cannot show it now: {error}"
    return f'<div class="placeholder">{html.escape(reason)}</div>'


def _rules_list(broken: list[tuple[RuleOutcome, str]]) -> str:
    return "".join(f'<li class="{o.status.lower()}">{html.escape(o.rule)}: '
                   f"{html.escape(detail)}</li>" for o, detail in broken)


def render_html(report: ValidationReport, root: Source,
                max_thumbnails: int = MAX_THUMBNAILS) -> str:
    """The report as one self-contained page: inline CSS, thumbnails as data: URIs."""
    checks = []
    for outcome in report.outcomes:
        found = (f"{files_phrase(len(outcome.offenders))}, shown below" if outcome.level == "file"
                 else "<br>".join(html.escape(f"{offender_name(o)}: {o['detail']}")
                                  for o in outcome.offenders)) if outcome.offenders else ""
        fix = _html_text(fix_hint(outcome, report.unit)) if outcome.status == "FAILED" else ""
        checks.append(f'<tr><td class="{outcome.status.lower()}">{outcome.status}</td>'
                      f"<td>{html.escape(outcome.rule)}</td>"
                      f"<td>{html.escape(outcome.description)}</td><td>{found}</td>"
                      f"<td>{fix}</td></tr>")
    classes = "".join(f"<tr><td>{html.escape(label)}</td><td>{count}</td></tr>"
                      for label, count in report.class_counts.items())
    files = list(_offendingfiles_phrase(report).items())
    shown, rest = files[:max_thumbnails], files[max_thumbnails:]
    with ThreadPoolExecutor() as pool:  # decoding releases the GIL
        pictures = list(pool.map(lambda item: _picture(root, *item), shown))
    cards = "".join(f"<figure>{picture}<figcaption><code>{html.escape(path)}</code>"
                    f"<ul>{_rules_list(broken)}</ul></figcaption></figure>"
                    for picture, (path, broken) in zip(pictures, shown, strict=True))
    listed = "".join(f"<li><code>{html.escape(path)}</code><ul>{_rules_list(broken)}</ul></li>"
                     for path, broken in rest)
    note = (f"<p>Thumbnails for the first {len(shown)} of {len(files)} files; the other "
            f"{len(rest)} are listed as text below them.</p>" if rest else "")
    verdict, items = report.verdict, report.unit
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Data validation: {verdict}</title>
<style>{_CSS}</style></head><body>
<h1 class="{verdict.lower()}">Data validation: {verdict}</h1>
<p>{html.escape(report.summary)}</p>
<h2>Checks</h2>
<table><tr><th>Result</th><th>Rule</th><th>Check</th><th>Found</th><th>How to fix</th></tr>
{"".join(checks)}</table>
<h2>{items.capitalize()} per class</h2>
<table><tr><th>Class</th><th>{items.capitalize()}</th></tr>{classes}</table>
<h2>Offending and quarantined files ({len(files)})</h2>
{note}<div class="grid">{cards}</div>{f"<ul>{listed}</ul>" if rest else ""}
</body></html>
"""


def write_html_report(report: ValidationReport, path: Path, root: Source,
                      max_thumbnails: int = MAX_THUMBNAILS) -> Path:
    """Write ``render_html`` to ``path``; ``root`` is the data folder the report's paths are
    relative to (the thumbnails are read from it)."""
    return write_text(path, render_html(report, root, max_thumbnails))
