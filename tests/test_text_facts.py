"""Text input the way users have it, and the way it goes wrong: each bad file is named with
what is wrong with it, and nothing is guessed."""

from __future__ import annotations

import pytest

from tlpipe.data.manifest import IMAGE_SUFFIXES
from tlpipe.data.text_facts import (
    MixedDataError,
    TextTableError,
    inspect_text,
    modality_of,
    normalised_digest,
    read_text_table,
)

LIMIT = 1_000_000


@pytest.mark.parametrize(("data", "error"), [
    (b"", "empty file (0 bytes)"),
    (b" \n\t \r\n", "only whitespace"),
    ("Caf\xe9 cr\xe8me".encode("latin-1"), "not UTF-8: byte 3 is 0xe9 (Latin-1"),
    ("texte".encode("utf-16"), "UTF-16, by its byte-order mark"),
    (bytes(range(256)) * 4, "not UTF-8"),  # binary data named .txt
    (b"PK\x03\x04\x14\x00\x00\x00", "binary data, not text: control character U+0003"),
    (b"x" * (LIMIT + 1), f"{LIMIT + 1} bytes, more than the limit of {LIMIT}; not read"),
])
def test_files_that_are_not_usable_text_say_why(data, error):
    info = inspect_text(data, LIMIT)
    assert not info.decodable and error in info.error


def test_a_good_text_is_counted_and_its_near_copies_share_a_digest():
    info = inspect_text("\ufeffThe  Court, adjourned!\n".encode(), LIMIT)
    assert info.decodable and info.words == 3 and info.chars == 23  # the BOM is not a character
    assert info.normalised_sha256 == normalised_digest("the court adjourned")
    assert normalised_digest("Café  crème") == normalised_digest("cafe creme")
    assert normalised_digest("the court adjourned") != normalised_digest("the court adjourns")


def test_a_csv_or_jsonl_table_fails_naming_the_line_and_column(tmp_path):
    good = tmp_path / "tickets.csv"
    good.write_text('text,topic\n"Refund, please",billing\nApp crashes on start,bug\n')
    rows = read_text_table(good, "text", "topic", LIMIT)
    assert [(r.line, r.text, r.label) for r in rows] == [
        (2, "Refund, please", "billing"), (3, "App crashes on start", "bug")]
    missing = tmp_path / "missing.csv"
    missing.write_text("text,topic\nfine,billing\nno label here,\n")
    with pytest.raises(TextTableError, match=r"missing\.csv, line 3: the 'topic' column is empty"):
        read_text_table(missing, "text", "topic", LIMIT)
    with pytest.raises(TextTableError, match=r"line 2: no column 'label'.*data\.label_column"):
        read_text_table(good, "text", "label", LIMIT)
    lines = tmp_path / "notes.jsonl"
    lines.write_text('{"text": "ok", "label": "a"}\n\n{"text": "broken", "label": \n')
    with pytest.raises(TextTableError, match=r"notes\.jsonl, line 3: not JSON"):
        read_text_table(lines, "text", "label", LIMIT)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text,label\nCaf\xe9,food\n".encode("latin-1"))
    with pytest.raises(TextTableError, match=r"latin\.csv: not UTF-8"):
        read_text_table(latin, "text", "label", LIMIT)


def test_images_and_texts_in_one_folder_are_refused_naming_one_of_each():
    assert modality_of(["a/1.txt", "b/2.txt"], IMAGE_SUFFIXES) == "text"
    assert modality_of(["a/1.jpg", "b/notes.md"], IMAGE_SUFFIXES) == "image"
    with pytest.raises(MixedDataError, match=r"1 images \(first: a/1\.png\) and 1 texts "
                                             r"\(first: b/2\.txt\)"):
        modality_of(["a/1.png", "b/2.txt"], IMAGE_SUFFIXES)
