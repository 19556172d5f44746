"""What the validation report tells a person: messages, hints, and the self-contained HTML page."""

from __future__ import annotations

import base64
import io
import re

import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.images import decompression_bomb, truncated_jpeg, write_class_folder
from tlpipe.cli.main import app
from tlpipe.config import DataConfig, SplitConfig, ValidationConfig
from tlpipe.data.manifest import DataLayoutError, build_manifest
from tlpipe.data.validation import ValidationFailed, validate_manifest
from tlpipe.params_file import parse_params
from tlpipe.paths import outputs_for
from tlpipe.reports.validation import write_html_report
from tlpipe.stages import manifest as manifest_stage
from tlpipe.stages import validate as validate_stage

CONFIG = ValidationConfig()
ODD_NAME = '<b>&"x.png'


def _gate(root, config=CONFIG, expected=None):
    manifest = build_manifest(root, DataConfig(), SplitConfig(), config.max_pixels, workers=2)
    return validate_manifest(manifest, config, expected)


def _blocks(markdown: str) -> dict[str, str]:
    """Each rule's part of the markdown report, by rule name."""
    parts = re.split(r"^- \[\w+\] ", markdown, flags=re.M)[1:]
    return {part.split(":", 1)[0]: part for part in parts}


def _tiny(path, shade: int = 0):
    Image.new("RGB", (8, 8), (shade, 0, 0)).save(path, format="PNG")


@pytest.fixture
def healthy(tmp_path):
    root = tmp_path / "data"
    write_class_folder(root, "ants", 12)
    write_class_folder(root, "bees", 12)
    return root


def test_unreadable_files_say_what_is_wrong_next_to_their_path(healthy):
    (healthy / "ants" / "zero.jpg").write_bytes(b"")
    (healthy / "ants" / "notes.jpg").write_text("definitely not a JPEG")
    truncated_jpeg(healthy / "bees" / "cut.jpg")
    markdown = _gate(healthy)[0].to_markdown()
    assert "ants/zero.jpg: empty file (0 bytes)" in markdown
    assert "ants/notes.jpg: not an image (PIL cannot identify it)" in markdown
    assert "bees/cut.jpg: truncated image" in markdown
    assert "BytesIO" not in markdown


@pytest.mark.parametrize("layout", ["", "train"])
def test_an_empty_data_folder_names_it_and_the_expected_layout(tmp_path, layout):
    (tmp_path / layout).mkdir(exist_ok=True)
    with pytest.raises(DataLayoutError) as raised:
        _gate(tmp_path)
    message = str(raised.value)
    assert str(tmp_path / layout) in message
    assert "one folder per class" in message and "train/ val/ [test/]" in message
    result = CliRunner().invoke(app, ["validate", str(tmp_path)])
    assert result.exit_code == 1 and "no class folders found" in result.output


def test_only_a_passed_report_speaks_of_training(healthy, tmp_path):
    passed = _gate(healthy)[0]
    assert "24 kept for training" in passed.to_markdown()
    (healthy / "ants" / "zero.jpg").write_bytes(b"")
    failed = _gate(healthy)[0]
    html = write_html_report(failed, tmp_path / "report.html", healthy).read_text()
    for text in (failed.to_markdown(), html):
        assert "kept for training" not in text and "nothing will be trained" in text


def test_quarantine_is_offered_for_file_rules_only(tmp_path):
    write_class_folder(tmp_path, "ants", 30)
    write_class_folder(tmp_path, "bees", 6)
    _tiny(tmp_path / "bees" / "tiny.png")
    report, _ = _gate(tmp_path, ValidationConfig(max_class_imbalance=3.0), ["ants", "wasps"])
    blocks = _blocks(report.to_markdown())
    assert "`min_side` to `validation.quarantine`" in blocks["min_side"]
    assert "`validation.min_side`" in blocks["min_side"]
    assert "`validation.max_class_imbalance`" in blocks["class_imbalance"]
    assert "`data.expected_classes`" in blocks["expected_classes"]
    assert "class 'wasps': expected, but no such class folder" in blocks["expected_classes"]
    for rule in ("class_imbalance", "expected_classes"):
        assert "quarantine" not in blocks[rule]


def test_many_offenders_of_one_rule_are_summarised(healthy, tmp_path):
    for index in range(200):
        _tiny(healthy / "ants" / f"tiny_{index:03}.png", shade=index)
    report, _ = _gate(healthy)
    block = _blocks(report.to_markdown())["min_side"]
    assert "(200 files)" in block and block.count("8x8 px") == 10
    assert "and 190 more (all in report.json / report.html)" in block
    assert "`validation.min_side`" in block and "`validation.quarantine`" in block

    html = write_html_report(report, tmp_path / "report.html", healthy,
                             max_thumbnails=50).read_text()
    assert html.count("<img ") == 50 and html.count("<figure>") == 50
    assert "first 50 of 200 files" in html and "ants/tiny_199.png" in html


def test_html_report_is_self_contained_with_one_thumbnail_per_offender(healthy, tmp_path):
    _tiny(healthy / "ants" / ODD_NAME)  # min_side
    (healthy / "ants" / "zero.jpg").write_bytes(b"")  # decodable: a placeholder
    decompression_bomb(healthy / "bees" / "bomb.png", side=2_000)  # never decoded
    Image.new("RGB", (300, 200), "teal").save(healthy / "bees" / "anim.gif")  # quarantined
    report, _ = _gate(healthy, ValidationConfig(max_pixels=1_000_000, quarantine=["format"]))
    target = tmp_path / "out" / "report.html"
    assert write_html_report(report, target, healthy) == target
    page = target.read_text()

    assert not re.search(r"https?://|src=\"/", page)
    sources = re.findall(r"<img [^>]*src=\"([^\"]*)\"", page)
    assert sources and all(s.startswith("data:image/jpeg;base64,") for s in sources)
    thumbnail = Image.open(io.BytesIO(base64.b64decode(sources[0].split(",", 1)[1])))
    assert max(thumbnail.size) <= 128

    found = re.findall(r"<figure>(.*?)<figcaption><code>(.*?)</code>(.*?)</figure>", page)
    cards = {path: (picture, rules) for picture, path, rules in found}
    assert len(found) == len(cards) == 4
    odd = "ants/&lt;b&gt;&amp;&quot;x.png"
    assert ODD_NAME not in page and odd in cards
    assert "<img " in cards[odd][0] and "min_side" in cards[odd][1]
    gif_picture, gif_rules = cards["bees/anim.gif"]
    assert "<img " in gif_picture and "format: format GIF" in gif_rules
    for path, rule, reason in (("ants/zero.jpg", "decodable", "empty file (0 bytes)"),
                               ("bees/bomb.png", "max_pixels", "not decoded")):
        picture, rules = cards[path]
        assert 'class="placeholder"' in picture and reason in picture and rule in rules
    assert "FAILED" in page and "QUARANTINED" in page
    assert "<td>ants</td><td>14</td>" in page and "<td>bees</td><td>13</td>" in page  # GIF left out


def test_the_validate_stage_writes_the_html_beside_markdown_and_json(healthy, tmp_path):
    params = parse_params({"data": {"root": str(healthy)}, "outputs_dir": str(tmp_path / "o")})
    manifest_stage.compute(params, tmp_path)
    out = outputs_for(params, tmp_path)
    validate_stage.compute(params, tmp_path)
    assert {p.name for p in out.report_html.parent.iterdir()} >= {
        "report.md", "report.json", "report.html"}
    _tiny(healthy / "bees" / "tiny.png")
    manifest_stage.compute(params, tmp_path)
    with pytest.raises(ValidationFailed):
        validate_stage.compute(params, tmp_path)
    assert "bees/tiny.png" in out.report_html.read_text()
