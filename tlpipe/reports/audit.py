"""The audit as one self-contained HTML page and a map of the embeddings.

Every flagged image is shown beside its nearest neighbour, with both labels and splits, the
label the probe suggests and the finding's score. The map is the embeddings' first two
principal components, coloured by class, one marker per split, flagged images ringed.
Thumbnails and the map are inline data: URIs, so the page needs no network to be viewed.
"""

from __future__ import annotations

import base64
import html
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers or CI

import matplotlib.pyplot as plt
import numpy as np
from sklearn.decomposition import PCA

from tlpipe.audit.findings import VERDICT_SETTING, AuditResult
from tlpipe.audit.neighbours import unit_rows
from tlpipe.fsio import write_atomic, write_text
from tlpipe.reports.thumbnails import BASE_CSS, Source, items_word, picture_html

MAP_POINTS = 5000  # a random sample beyond this, flagged images always in it
MARKERS = {"train": "o", "val": "s", "test": "^"}
TITLES = {"label_issue": "Label issues", "leak": "Leaks: near-copies across splits",
          "conflict": "Conflicts: near-copies filed under different classes",
          "outlier": "Outliers: far from every class"}
WHY = {
    "label_issue": "A probe that never saw the image gives its label a low probability. The "
                   "score is cleanlab's label quality (0 to 1, low = suspect).",
    "leak": "The same photo, possibly resized or re-encoded, in two splits: the held-out "
            "score counts an image the model has seen. The left image is the training side.",
    "conflict": "Near-copies with different labels: at least one of them is wrong.",
    "outlier": "Unlike every class: the score is its distance to the nearest class centre in "
               "robust standard deviations above the median image's.",
}

_CSS = BASE_CSS + """
figure{margin:0;width:280px;border:1px solid #ddd;padding:.4rem;font-size:.8rem;
overflow-wrap:anywhere}
.pair{display:flex;gap:.4rem;justify-content:center}
.pair img{max-width:128px;max-height:128px}
.quarantine{color:#9a6700}.fail{color:#cf222e}.report{color:#555}
.missing{width:128px;height:96px;background:#f6f8fa;border:1px dashed #999;font-size:.7rem}
"""


def plot_map(result: AuditResult, vectors: np.ndarray, target: Path, seed: int) -> Path:
    """The embeddings' first two principal components, flagged images ringed."""
    images = result.images
    flagged = images["path"].isin(result.findings["path"]).to_numpy()
    rng = np.random.default_rng(seed)
    shown = np.flatnonzero(flagged)
    others = np.flatnonzero(~flagged)
    if len(others) > MAP_POINTS:
        others = rng.choice(others, MAP_POINTS, replace=False)
    shown = np.sort(np.concatenate([shown, others]))
    unit = unit_rows(vectors[shown])
    points = (PCA(2, random_state=seed).fit_transform(unit) if len(shown) > 2
              else np.zeros((len(shown), 2)))
    figure, axis = plt.subplots(figsize=(8, 6.5))
    classes = sorted(images["label"].unique())
    colours = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    labels, splits = images["label"].to_numpy()[shown], images["split"].to_numpy()[shown]
    for c, label in enumerate(classes):
        for split, marker in MARKERS.items():
            where = (labels == label) & (splits == split)
            if where.any():
                axis.scatter(*points[where].T, s=14, marker=marker, alpha=.7,
                             color=colours(c % colours.N), label=f"{label} ({split})")
    ringed = flagged[shown]
    if ringed.any():
        axis.scatter(*points[ringed].T, s=90, facecolors="none", edgecolors="red",
                     linewidths=1.3, label="flagged")
    axis.set(title=f"Embeddings, first two principal components ({len(shown)} of "
                   f"{len(images)} images)", xlabel="PC 1", ylabel="PC 2")
    axis.legend(fontsize=7, loc="best", ncol=2)
    figure.tight_layout()
    write_atomic(target, lambda path: figure.savefig(path, format="png", dpi=110))
    plt.close(figure)
    return target


def _thumbnail(root: Source, path: str) -> str:
    if not path:
        return '<div class="missing">no neighbour</div>'
    try:
        return picture_html(root, path)
    except Exception as error:  # changed or gone since the audit: the page is still written
        return f'<div class="missing">cannot show {html.escape(path)}: {error}</div>'


def _card(row, pictures: tuple[str, str]) -> str:
    details = [f"<b>{html.escape(row.label)}</b> ({row.split})"]
    if row.finding == "label_issue":
        details.append(f"suggested: <b>{html.escape(row.suggested)}</b>, "
                       f"label quality {row.score:.3f}")
    elif row.finding == "outlier":
        details.append(f"{row.score:.1f} deviations from the nearest class")
    else:
        details.append(f"cosine {row.similarity:.3f}")
    if row.neighbour:
        details.append(f"neighbour: {html.escape(row.neighbour_label)} "
                       f"({row.neighbour_split})")
    action = "quarantined" if row.quarantined else row.verdict
    return (f'<figure><div class="pair">{pictures[0]}{pictures[1]}</div><figcaption>'
            f"<code>{html.escape(row.path)}</code><br>{'<br>'.join(details)}"
            f'<br><span class="{row.verdict}">{action}</span></figcaption></figure>')


def render_html(result: AuditResult, root: Source, map_png: Path, max_images: int) -> str:
    summary = result.summary()
    rows = "".join(f"<tr><td>{TITLES[kind]}</td><td>{summary[kind + 's']}</td>"
                   f"<td><code>audit.{setting}: {result.verdicts[kind]}</code></td></tr>"
                   for kind, setting in VERDICT_SETTING.items())
    sections = []
    for kind in VERDICT_SETTING:
        found = result.findings[result.findings["finding"] == kind]
        if found.empty:
            continue
        shown, rest = found.iloc[:max_images], found.iloc[max_images:]
        with ThreadPoolExecutor() as pool:  # decoding releases the GIL
            pictures = list(pool.map(
                lambda row: (_thumbnail(root, row.path), _thumbnail(root, row.neighbour)),
                shown.itertuples()))
        cards = "".join(_card(row, pair) for row, pair in zip(shown.itertuples(), pictures,
                                                               strict=True))
        listed = "".join(f"<li><code>{html.escape(path)}</code></li>" for path in rest["path"])
        sections.append(f"<h2>{TITLES[kind]} ({len(found)})</h2><p>{WHY[kind]}</p>"
                        f'<div class="grid">{cards}</div>'
                        + (f"<p>{len(rest)} more:</p><ul>{listed}</ul>" if len(rest) else ""))
    picture = base64.b64encode(map_png.read_bytes()).decode()
    items = items_word(root)
    notes = "".join(f"<p>{html.escape(note)}</p>" for note in result.notes)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Data audit</title>
<style>{_CSS}</style></head><body>
<h1>Data audit: {summary['images']} {items}</h1>
<p>{summary['quarantined']} quarantined (left out of training),
{summary['duplicates_within_class']} harmless near-copy pair(s) within a class.</p>{notes}
<table><tr><th>Finding</th><th>{items.capitalize()}</th><th>Verdict</th></tr>{rows}</table>
<img src="data:image/png;base64,{picture}" alt="map of the embeddings">
{"".join(sections)}
</body></html>
"""


def write_html_report(result: AuditResult, root: Source, map_png: Path, target: Path,
                      max_images: int) -> Path:
    return write_text(target, render_html(result, root, map_png, max_images))
