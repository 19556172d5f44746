"""What a text file is, read safely: UTF-8 or not, empty or not, how long, and a digest of its
normalised content; and texts from a CSV or JSON Lines table, checked row by row.

The text path's counterpart of ``image_facts``. Nothing is guessed: a file that is not UTF-8
(Latin-1, UTF-16, binary data named .txt) is reported with the byte where decoding failed,
not read with a fallback codec, since a wrong guess would train on mojibake. A file over
``max_bytes`` is reported unread.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from tlpipe.errors import TlpipeError

TEXT_SUFFIXES = frozenset({".txt"})
# A table of texts is read whole; beyond this it should be a folder, or split.
MAX_TABLE_BYTES = 2 * 1024**3
TABLE_SUFFIXES = frozenset({".csv", ".jsonl"})
# Control characters other than tab, newline and carriage return: binary data decodes as
# "UTF-8" often enough (all ASCII bytes are valid) that decoding alone does not catch it. Real
# texts hold a few (quotes-topics underlines with backspaces), which the tokenizer drops;
# a NUL, or more than this share of them, is binary data.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
MAX_CONTROL_SHARE = 0.1
_NOT_WORD = re.compile(r"[\W_]+")


@dataclass(frozen=True)
class TextInfo:
    chars: int | None      # characters after decoding
    words: int | None      # whitespace-separated words
    normalised_sha256: str | None  # case, accents, punctuation and spacing ignored
    decodable: bool
    error: str | None


def inspect_text(data: bytes, max_bytes: int) -> TextInfo:
    """Facts of one text file's bytes; ``decodable`` False, with the reason, for anything
    that is not a usable UTF-8 text."""
    if len(data) > max_bytes:
        return TextInfo(None, None, None, False,
                        f"{len(data)} bytes, more than the limit of {max_bytes}; not read")
    if not data:
        return TextInfo(0, 0, None, False, "empty file (0 bytes)")
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark is not part of the text
    except UnicodeDecodeError as error:
        return TextInfo(None, None, None, False,
                        f"not UTF-8: byte {error.start} is 0x{data[error.start]:02x} "
                        f"({_likely_encoding(data)}); convert it to UTF-8 (iconv -f ... -t "
                        "utf-8)")
    control = _CONTROL.search(text)
    if control and ("\x00" in text or len(_CONTROL.findall(text)) > MAX_CONTROL_SHARE * len(text)):
        return TextInfo(len(text), None, None, False,
                        f"binary data, not text: control character "
                        f"U+{ord(control.group()):04X} at character {control.start()}")
    if not text.strip():
        return TextInfo(len(text), 0, None, False, "only whitespace: no text")
    return TextInfo(len(text), len(text.split()), normalised_digest(text), True, None)


def normalised_digest(text: str) -> str:
    """The same for texts that differ only in case, accents, punctuation or spacing: the key
    of near-duplicates across classes and splits."""
    folded = unicodedata.normalize("NFKD", text.casefold())
    letters = "".join(char for char in folded if not unicodedata.combining(char))
    return hashlib.sha256(" ".join(_NOT_WORD.sub(" ", letters).split()).encode()).hexdigest()


def _likely_encoding(data: bytes) -> str:
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return "UTF-16, by its byte-order mark"
    if b"\x00" in data:
        return "binary data, or UTF-16 without a byte-order mark"
    return "Latin-1 or Windows-1252, most likely"


class TextTableError(TlpipeError):
    """A CSV or JSON Lines file of texts that cannot be used as it is."""


@dataclass(frozen=True)
class TableRow:
    line: int    # where the row starts in the file, 1-based (the header is line 1 of a CSV)
    text: str
    label: str


def read_text_table(path: Path, text_column: str, label_column: str | None,
                    max_bytes: int) -> list[TableRow]:
    """The rows of a CSV (with a header) or JSON Lines file; fails naming the file, the line
    and the column for a missing column, an empty label or a row that does not parse.
    ``label_column`` None: texts to classify, with no labels (their ``label`` is "")."""
    path = Path(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise TextTableError(f"{path}: {size} bytes, more than the limit of {max_bytes} for "
                             "one table; split it, or raise the limit")
    info = inspect_text(path.read_bytes(), max_bytes)
    if not info.decodable:
        raise TextTableError(f"{path}: {info.error}")
    content = path.read_text(encoding="utf-8-sig")
    records = (_csv_records(path, content) if path.suffix.lower() == ".csv"
               else _jsonl_records(path, content))
    rows = []
    for line, record in records:
        for column in (text_column, label_column or text_column):
            if column not in record:
                raise TextTableError(
                    f"{path}, line {line}: no column {column!r} (it has {sorted(record)[:10]});"
                    " name the columns with data.text_column and data.label_column")
        text, label = record[text_column], record[label_column] if label_column else ""
        if label_column and (label is None or not str(label).strip()):
            raise TextTableError(f"{path}, line {line}: the {label_column!r} column is empty;"
                                 " every text needs its class")
        rows.append(TableRow(line, "" if text is None else str(text), str(label).strip()))
    if not rows:
        raise TextTableError(f"{path}: no rows")
    return rows


def _csv_records(path: Path, content: str) -> list[tuple[int, dict]]:
    reader = csv.DictReader(io.StringIO(content, newline=""))
    records = []
    try:
        for record in reader:
            if None in record:  # more fields than the header names
                raise TextTableError(f"{path}, line {reader.line_num}: more fields than the "
                                     "header; quote texts that hold commas")
            records.append((reader.line_num, record))
    except csv.Error as error:
        raise TextTableError(f"{path}, line {reader.line_num}: {error}") from None
    return records


def _jsonl_records(path: Path, content: str) -> list[tuple[int, dict]]:
    records = []
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise TextTableError(f"{path}, line {number}: not JSON ({error.msg})") from None
        if not isinstance(record, dict):
            raise TextTableError(f"{path}, line {number}: expected a JSON object, got "
                                 f"{type(record).__name__}")
        records.append((number, record))
    return records


class MixedDataError(TlpipeError):
    """A data folder holding both images and texts."""


def modality_of(files: list[str], image_suffixes: frozenset[str]) -> str:
    """"image" or "text" for a folder's files (paths relative to it), by their suffixes;
    fails naming a file of each kind when there are both (one model takes one kind)."""
    images = [f for f in files if Path(f).suffix.lower() in image_suffixes]
    texts = [f for f in files if Path(f).suffix.lower() in TEXT_SUFFIXES]
    if images and texts:
        raise MixedDataError(
            f"the data holds {len(images)} images (first: {images[0]}) and {len(texts)} texts "
            f"(first: {texts[0]}): one model learns from one kind; move the other kind to a "
            "folder of its own")
    return "text" if texts else "image"
