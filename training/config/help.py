"""``python train.py --help``: every config key with its type, default and documentation.

The documentation is schema.py's own comments (the lines above a field and the one after it), so the help
cannot drift from the schema.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import typing

from training.config import schema
from training.config.loader import type_name
from training.config.schema import Config
from training.config.validate import RANGES, TABLE_RANGES

HELP_FLAGS = ("--help", "-h")


def wants_help(argv: list[str]) -> bool:
    return any(arg in HELP_FLAGS for arg in argv)


def _field_docs() -> dict[tuple[str, str], str]:
    """{(class name, field name): its comment text} from schema.py's source."""
    source = inspect.getsource(schema)
    lines = source.splitlines()
    docs = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ClassDef):
            continue
        previous_end = node.lineno
        for item in node.body:
            if not isinstance(item, ast.AnnAssign) or not isinstance(item.target, ast.Name):
                previous_end = getattr(item, "end_lineno", previous_end)
                continue
            above = [
                line.strip()[1:].strip()
                for line in lines[previous_end : item.lineno - 1]
                if line.strip().startswith("#")
            ]
            code = lines[item.end_lineno - 1]
            after = [code.split("  # ", 1)[1].strip()] if "  # " in code else []
            docs[(node.name, item.target.id)] = " ".join(above + after)
            previous_end = item.end_lineno
    return docs


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def _key_lines(cls, prefix: str, docs: dict, flag: str = "--", indent: str = "  ") -> list[str]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        item = typing.get_args(tp)[0] if typing.get_origin(tp) is list else None
        if item is not None and dataclasses.is_dataclass(item):
            doc = docs.get((cls.__name__, f.name), "")
            out.append(f"{indent}[[{prefix}{f.name}]] entries (TOML only): {doc}")
            out += _key_lines(item, f"{prefix}{f.name}[].", docs, "", indent + "  ")
            continue
        key = f"{prefix}{f.name}"
        rule = RANGES.get(key) or (TABLE_RANGES.get(f.name) if "[]" in prefix else None)
        limit = f" (must be {rule})" if rule else ""
        out.append(f"{indent}{flag}{key}  {type_name(tp)} = {_default(f)!r}{limit}")
        doc = docs.get((cls.__name__, f.name))
        if doc:
            out.append(
                textwrap.fill(
                    doc, 100, initial_indent=indent + "    ", subsequent_indent=indent + "    "
                )
            )
    return out


def usage(intro: str) -> str:
    """The help text: intro (train.py's docstring), then every key by section."""
    docs = _field_docs()
    out = [
        "usage: python train.py [--config FILE] [--section.key VALUE | --section.key=VALUE ...]",
        "",
        intro.strip(),
        "",
        "Options: --config FILE (a TOML file), then any key as --section.key VALUE or "
        "--section.key=VALUE",
        "(command line > TOML file > defaults; lists as 1,2,3; booleans true/false).",
        "Config errors print one line 'error: ...' and exit with status 2.",
    ]
    for section in dataclasses.fields(Config):
        out += ["", f"[{section.name}]"]
        out += _key_lines(section.default_factory, f"{section.name}.", docs)
    return "\n".join(out)
