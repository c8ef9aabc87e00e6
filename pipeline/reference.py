"""The params reference, docs/params.md, generated from the config dataclasses themselves: every
key of params.yaml with its type, default, limits and the comment its field carries in the code.

    python -m pipeline.reference --write    # regenerate docs/params.md (a test fails when it is stale)
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from pathlib import Path
from typing import Optional, Sequence

from pipeline.commands import command_parser
from pipeline.config import Params
from pipeline.errors import cli
from pipeline.io import atomic_file

REFERENCE_FILE = Path("docs") / "params.md"
LIMITS = {"at_least": ">= {}", "above": "> {}", "below": "< {}", "at_most": "<= {}", "pattern": "matches `{}`"}


def field_comments(cls: type) -> dict[str, str]:
    """The `# comment` at the end of each field's line in the class's source."""
    comments = {}
    for line in inspect.getsource(cls).splitlines():
        match = re.match(r"\s+(\w+):[^#]*#\s*(.*)$", line)
        if match:
            comments[match.group(1)] = match.group(2).strip()
    return comments


def type_name(hint) -> str:
    """A short name for a field's type: `int`, `str`, `one of a, b`, `list of str`, `mapping of <Section>`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin is typing.Union:
        inner = [a for a in args if a is not type(None)]
        return type_name(inner[0]) + " or null"
    if origin is list:
        return "list of " + type_name(args[0])
    if origin is dict:
        return "mapping of name to " + type_name(args[1])
    return getattr(hint, "__name__", str(hint))


def default_text(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
        if dataclasses.is_dataclass(value):
            return "(section)"
    else:
        return "required"
    return "null" if value is None else f"`{value!r}`" if isinstance(value, str) else f"`{value}`"


def section_rows(cls: type, prefix: str) -> list[tuple[str, str, str, str]]:
    """(key, type, default and limits, meaning) for every field of `cls`, nested sections flattened."""
    rows, comments, hints = [], field_comments(cls), typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        hint, key = hints[field.name], f"{prefix}{field.name}"
        inner = [a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)]
        limits = ", ".join(LIMITS[k].format(v) for k, v in field.metadata.items() if k in LIMITS)
        default = default_text(field) + (f" ({limits})" if limits else "")
        if dataclasses.is_dataclass(hint):
            rows += section_rows(hint, key + ".")
            continue
        if inner and typing.get_origin(hint) is dict:
            rows.append((key, "mapping of name to entry", default, comments.get(field.name, "")))
            rows += section_rows(inner[0], key + ".<name>.")
            continue
        if inner:  # an optional section (finetune.lora)
            rows.append((key, "section or null", default, comments.get(field.name, "")))
            rows += section_rows(inner[0], key + ".")
            continue
        rows.append((key, type_name(hint), default, comments.get(field.name, "")))
    return rows


def reference() -> str:
    """docs/params.md: one table per top-level section of params.yaml."""
    lines = ["# params.yaml reference", "",
             "Generated from the config dataclasses (pipeline/config.py for the data stages, model/config.py for the model",
             "side) by `python -m pipeline.reference --write`; a test fails when this page is stale. An unknown key or a",
             "value outside its limits stops the first stage that runs with one line naming the key. *Default* is what a",
             "key left out of params.yaml means; the shipped params.yaml sets many keys otherwise (its comments say why).", ""]
    hints = typing.get_type_hints(Params)
    for field in dataclasses.fields(Params):
        hint = hints[field.name]
        inner = [a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)]
        lines += [f"## {field.name}", ""]
        if not (dataclasses.is_dataclass(hint) or inner):
            lines += [f"`{field.name}`: {type_name(hint)}, {default_text(field)}.", ""]
            continue
        section = hint if dataclasses.is_dataclass(hint) else inner[0]
        doc = section.__doc__ or ""
        if doc and not doc.startswith(section.__name__ + "("):  # a dataclass without a docstring gets its signature
            lines += [" ".join(doc.split()), ""]
        rows = section_rows(section, field.name + "." if dataclasses.is_dataclass(hint) else f"{field.name}.<name>.")
        lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in (f"`{k}`", t, d, m)) + " |" for k, t, d, m in rows] + [""]
    return "\n".join(lines).rstrip() + "\n"


@cli
def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = command_parser(__doc__, "python -m pipeline.reference")
    parser.add_argument("--write", action="store_true", help=f"write {REFERENCE_FILE} instead of printing it")
    args = parser.parse_args(argv)
    text = reference()
    if args.write:
        with atomic_file(REFERENCE_FILE) as handle:
            handle.write(text)
        print(f"wrote {REFERENCE_FILE}")
    else:
        print(text, end="")


if __name__ == "__main__":
    main()
