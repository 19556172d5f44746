"""MkDocs hook: the settings reference of docs/settings.md, generated from the code.

On the page settings.md the marker line ``<!-- settings-table -->`` becomes one table per
section of ``tlpipe.config.Params``: key, type, default, constraints or choices, and what it
does. "What it does" is the comment of the key in the params file that ``tlpipe init`` ships
(``tlpipe/templates/params.yaml.tmpl``): the inline ``# comment`` after the key, and the
full-line comments directly above it. The build fails, naming the key, when the file and the
configuration disagree about which keys there are, so the page cannot drift from the code.

MkDocs runs in the project's virtualenv, where ``import tlpipe`` works (``make docs``).
"""

from __future__ import annotations

import html
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import annotated_types
from mkdocs.exceptions import PluginError
from pydantic import AfterValidator, AnyHttpUrl, BaseModel
from pydantic_core import PydanticUndefined

import tlpipe
from tlpipe import config as tlpipe_config

MARKER = "<!-- settings-table -->"
PAGE = "settings.md"
TEMPLATE = Path(tlpipe.__file__).parent / "templates" / "params.yaml.tmpl"
TOP_LEVEL = "top level"


class SettingsDrift(PluginError):
    """The shipped params file and tlpipe.config.Params name different keys (MkDocs stops the
    build with this message)."""


# The params file's comments -----------------------------------------------------------------

KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][A-Za-z0-9_]*):(?P<rest>.*)$")


@dataclass
class Commented:
    """One key of the params file and its comment; a section holds its keys."""

    comment: str = ""
    keys: dict[str, Commented] = field(default_factory=dict)


def _inline_comment(rest: str) -> str:
    """The comment after a key's value: from the first `` #`` outside quotes."""
    quote = None
    for index, char in enumerate(rest):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or rest[index - 1].isspace()):
            return rest[index + 1:].strip()
    return ""


def read_params_file(path: Path) -> Commented:
    """The keys of the params file, nested by indentation, each with its comment.

    The comment block that opens the file is the file's own header, not its first key's. A
    blank line ends a block of full-line comments: only those directly above a key are its.
    """
    root = Commented()
    stack: list[tuple[int, Commented]] = [(-1, root)]
    pending: list[str] = []
    header = True
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped:
            pending, header = [], False
            continue
        if stripped.startswith("#"):
            if not header:
                pending.append(stripped.lstrip("#").strip())
            continue
        header = False
        match = KEY_LINE.match(line)
        if not match:
            raise SettingsDrift(f"{path}: cannot read the line {line!r}")
        indent = len(match["indent"])
        while stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][1]
        entry = Commented(" ".join([*pending, _inline_comment(match["rest"])]).strip())
        parent.keys[match["key"]] = entry
        stack.append((indent, entry))
        pending = []
    return root


# The configuration's fields -----------------------------------------------------------------


def _is_section(annotation: object) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, tlpipe_config.Section)


def _constraints(metadata: list, unit: str = "item") -> list[str]:
    """Constraints in words; ``unit`` is what a length counts (items of a list, characters)."""
    words = []
    for item in metadata:
        for kind, symbol in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if isinstance(item, getattr(annotated_types, kind.title())):
                words.append(f"{symbol} {_yaml(getattr(item, kind))}")
        if isinstance(item, annotated_types.MinLen):
            words.append(f"at least {item.min_length} {unit}{'s' * (item.min_length != 1)}")
        if isinstance(item, annotated_types.MaxLen):
            words.append(f"at most {item.max_length} {unit}s")
        if getattr(item, "pattern", None):
            words.append(f"matches `{item.pattern}`")
        if isinstance(item, AfterValidator):
            choices = _validator_choices(item)
            if choices:
                words.append(choices)
    return words


def _validator_choices(validator: AfterValidator) -> str:
    """What a validator accepts, where the configuration says so in words."""
    if validator.func is getattr(tlpipe_config, "_device_setting", None):
        return getattr(tlpipe_config, "DEVICE_CHOICES", "")
    return ""


def _split_annotated(annotation: object) -> tuple[object, list]:
    if typing.get_origin(annotation) is typing.Annotated:
        inner, *metadata = typing.get_args(annotation)
        flattened = []
        for item in metadata:  # Field(...) inside Annotated carries its own metadata
            flattened.extend(getattr(item, "metadata", None) or [item])
        return inner, flattened
    return annotation, []


TYPE_NAMES = {str: "text", int: "integer", float: "number", bool: "true/false", Path: "path",
              type(None): "null"}


def describe_type(annotation: object, metadata: list = ()) -> tuple[str, list[str]]:
    """A reader's name for a type, and its constraints and choices, nested ones included
    (``metadata``: the field's own constraints, which pydantic keeps apart from its type)."""
    annotation, nested = _split_annotated(annotation)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    notes = _constraints([*metadata, *nested], "character" if annotation is str else "item")
    if origin is typing.Literal:
        choices = ", ".join(f"`{_yaml(arg)}`" for arg in args)
        return "text", [f"one of {choices}", *notes]
    if origin in (typing.Union, types.UnionType):
        parts = [describe_type(arg) for arg in args]
        notes = [note for _, more in parts for note in more] + notes
        return " or ".join(name for name, _ in parts), notes
    if origin is list:
        name, inner = describe_type(args[0])
        return f"list of {name}", [f"each {note}" for note in inner] + notes
    if origin is tuple:
        described = [describe_type(arg) for arg in args]
        name = f"[{', '.join(name for name, _ in described)}]"
        items = [f"item {i + 1} {'; '.join(more)}" for i, (_, more) in enumerate(described) if more]
        return name, items + notes
    if annotation is AnyHttpUrl:
        return "http(s) URL", notes
    return TYPE_NAMES.get(annotation, getattr(annotation, "__name__", str(annotation))), notes


def _yaml(value: object) -> str:
    """A value as it is written in params.yaml."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_yaml(item) for item in value) + "]"
    if isinstance(value, float):
        return repr(value) if 1e-4 <= abs(value) < 1e7 or value == 0 else f"{value:g}"
    return str(value)


def _default(info) -> str:
    if info.default is not PydanticUndefined:
        return f"`{_yaml(info.default)}`"
    if info.default_factory is not None:
        return f"`{_yaml(info.default_factory())}`"
    return "-"


# The page ------------------------------------------------------------------------------------


def _cell(text: str) -> str:
    """Markdown for a table cell: HTML-escaped outside code spans, pipes escaped everywhere."""
    parts = text.split("`")
    for index in range(0, len(parts), 2):
        parts[index] = html.escape(parts[index], quote=False)
    return "`".join(parts).replace("|", "\\|")


def _link_manual(text: str) -> str:
    """The params file's pointers into the manual, ``(docs: audit.md)``, as links."""
    return re.sub(r"docs: (?P<page>[a-z-]+\.md)", r"[\g<page>](\g<page>)", text)


def _rows(model: type[BaseModel], commented: Commented, prefix: str) -> list[str]:
    """One table row per setting of ``model`` (its sections get tables of their own)."""
    rows = []
    for name, info in model.model_fields.items():
        if _is_section(info.annotation):
            continue
        type_name, notes = describe_type(info.annotation, info.metadata)
        comment = commented.keys[name].comment
        rows.append(" | ".join([
            f"`{prefix}{name}`", _cell(type_name), _default(info), _cell("; ".join(notes)),
            _link_manual(_cell(comment))]))
    return [f"| {row} |" for row in rows]


HEADER = ["| key | type | default | constraints, choices | what it does |",
          "|---|---|---|---|---|"]


def check_same_keys(model: type[BaseModel], commented: Commented, prefix: str = "") -> None:
    """Raise SettingsDrift naming the first key only one of the two has."""
    fields = set(model.model_fields)
    for name in sorted(set(commented.keys) - fields):
        raise SettingsDrift(
            f"settings reference: the key {prefix}{name} is in {TEMPLATE} but is not a "
            f"setting of tlpipe.config.Params")
    for name in sorted(fields - set(commented.keys)):
        raise SettingsDrift(
            f"settings reference: the setting {prefix}{name} of tlpipe.config.Params is not "
            f"in {TEMPLATE}: add it there, with a comment")
    for name, info in model.model_fields.items():
        if _is_section(info.annotation):
            check_same_keys(info.annotation, commented.keys[name], f"{prefix}{name}.")


def settings_reference() -> str:
    commented = read_params_file(TEMPLATE)
    check_same_keys(tlpipe_config.Params, commented)
    blocks = [f"### {TOP_LEVEL}", "",
              *HEADER, *_rows(tlpipe_config.Params, commented, ""), ""]
    for name, info in tlpipe_config.Params.model_fields.items():
        if not _is_section(info.annotation):
            continue
        section = commented.keys[name]
        blocks += [f"### {name}", ""]
        if section.comment:
            blocks += [_link_manual(_cell(section.comment[0].upper() + section.comment[1:]))
                       + ".", ""]
        blocks += [*HEADER, *_rows(info.annotation, section, f"{name}."), ""]
    return "\n".join(blocks)


def on_page_markdown(markdown: str, page, config, files) -> str:
    """MkDocs' event, called with these keyword arguments for every page."""
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown.splitlines():
        raise SettingsDrift(f"{PAGE}: the marker line {MARKER} is missing")
    return "\n".join(settings_reference() if line == MARKER else line
                     for line in markdown.splitlines()) + "\n"
