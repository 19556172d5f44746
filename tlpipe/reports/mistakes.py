"""The test images the model got wrong, as one self-contained HTML page: the most confident
mistakes first, each with its thumbnail, true and predicted class and the top probabilities;
above them, which class was taken for which how often."""

from __future__ import annotations

import html
from collections import Counter
from pathlib import Path

from tlpipe.fsio import write_text
from tlpipe.reports.thumbnails import BASE_CSS, Source, items_word, picture_html

TOP_PROBABILITIES = 3

_CSS = BASE_CSS + """
figure{margin:0;width:220px;border:1px solid #ddd;padding:.4rem;font-size:.8rem;
overflow-wrap:anywhere}
figure img{display:block;margin:0 auto;width:128px;height:128px;object-fit:contain}
.wrong{color:#cf222e;font-weight:600}.missing{color:#9a6700}
"""


def mistakes_of(predictions: list[dict]) -> list[dict]:
    """The wrong predictions, the most confident first."""
    wrong = [row for row in predictions if row["actual"] != row["predicted"]]
    return sorted(wrong, key=lambda row: -row["probability"])


def render_mistakes(predictions: list[dict], classes: list[str], root: Source,
                    max_images: int) -> str:
    wrong = mistakes_of(predictions)
    pairs = Counter((row["actual"], row["predicted"]) for row in wrong)
    confusions = "".join(
        f"<tr><td>{html.escape(actual)}</td><td>{html.escape(predicted)}</td><td>{count}</td></tr>"
        for (actual, predicted), count in pairs.most_common())
    cards = "".join(_card(row, classes, root) for row in wrong[:max_images])
    shown = (f"; the {max_images} most confident shown" if len(wrong) > max_images else "")
    items = items_word(root)
    body = (f"<p>{len(wrong)} of {len(predictions)} test {items} misclassified{shown}. Most "
            "confident first: a confident mistake is often a wrong label, or a case the "
            "training data lacks.</p>"
            + (f"<table><tr><th>actual</th><th>predicted as</th><th>{items}</th></tr>"
               f"{confusions}</table><div class='grid'>{cards}</div>" if wrong else
               "<p>No mistakes on the test split.</p>"))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Mistakes on the test "
            f"split</title><style>{_CSS}</style></head><body><h1>Mistakes on the test split"
            f"</h1>{body}</body></html>")


def _card(row: dict, classes: list[str], root: Source) -> str:
    try:
        picture = picture_html(root, row["path"])
    except (OSError, ValueError) as error:  # gone or changed since it was scored
        picture = f"<p class='missing'>cannot show: {html.escape(str(error))}</p>"
    ranked = sorted(classes, key=lambda name: -row[f"prob_{name}"])[:TOP_PROBABILITIES]
    probabilities = ", ".join(f"{html.escape(name)} {row[f'prob_{name}']:.3f}"
                              for name in ranked)
    return (f"<figure>{picture}<figcaption>{html.escape(row['path'])}<br>actual "
            f"<b>{html.escape(row['actual'])}</b>, predicted <span class='wrong'>"
            f"{html.escape(row['predicted'])}</span><br>{probabilities}</figcaption></figure>")


def write_mistakes_page(predictions: list[dict], classes: list[str], root: Source, target: Path,
                        max_images: int) -> Path:
    return write_text(target, render_mistakes(predictions, classes, root, max_images))
