"""The schema of ``python -m pipeline.ingest``: which input columns are the label, the weight, dense and
categorical features, and how each is encoded (docs/data.md, "Your own data: the schema").

Every key is checked: an unknown key, a wrong type or a value out of its choices is a SchemaError naming
the schema file, the section and the key.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

TRANSFORMS = ("none", "log1p", "standardize")
ENCODINGS = ("vocab", "hash", "raw")
TYPES = ("string", "int")
KEEP = ("first", "last")
FORMATS = ("auto", "parquet", "csv")


class SchemaError(ValueError):
    """A schema file that cannot be used; the message names the file, section and key."""


@dataclass
class Dense:
    column: str
    fill: float = 0.0  # replaces a missing (null) value, before the transform
    transform: str = "none"  # "none", "log1p" (of max(x, 0)) or "standardize" (train mean and std)


@dataclass
class Categorical:
    column: str
    name: str = ""  # the feature (and table) name; "" = the column
    type: str = "string"  # the values' type: "string" or "int"
    encode: str = "vocab"  # "vocab", "hash" or "raw"
    min_freq: int = 1  # vocab: values seen fewer times in the train files share row 0
    rows: int = 0  # hash: rows of the table (>= 2); raw: an optional bound (0 = max id + 1)
    list: bool = False  # a list column: one bag of ids per row (multi-hot)
    max_len: int = 0  # list: ids kept per row (0 = all of them)
    keep: str = "first"  # list: which ids a longer list keeps, "first" or "last"
    separator: str = ""  # list in CSV: the elements of a delimited string (e.g. "|")
    pooling: str = (
        "sum"  # how training pools a bag when the config lists no tables: "sum" or "mean"
    )


@dataclass
class Schema:
    path: str
    label: str
    weight: str = ""
    dense: list[Dense] = field(default_factory=list)
    categorical: list[Categorical] = field(default_factory=list)
    format: str = "auto"  # input files: "parquet", "csv" or "auto" (by extension)
    csv_delimiter: str = ","

    @property
    def columns(self) -> list[str]:
        """Every input column the schema reads, each once, in schema order."""
        names = [self.label] + ([self.weight] if self.weight else [])
        names += [d.column for d in self.dense] + [c.column for c in self.categorical]
        return list(dict.fromkeys(names))


def _take(table: dict, key: str, kind, default, where: str):
    value = table.pop(key, default)
    kinds = (int, float) if kind is float else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and kind is not bool):
        raise SchemaError(f"{where}: key {key!r} is {value!r}, expected a {kind.__name__}")
    return float(value) if kind is float else value


def _choice(value: str, choices: tuple[str, ...], key: str, where: str) -> str:
    if value not in choices:
        raise SchemaError(f"{where}: key {key!r} is {value!r}, expected one of {list(choices)}")
    return value


def _no_more(table: dict, where: str) -> None:
    if table:
        raise SchemaError(f"{where}: unknown key {sorted(table)[0]!r}")


def _column(table: dict, where: str) -> str:
    column = _take(table, "column", str, None, where) if "column" in table else None
    if not column:
        raise SchemaError(f"{where}: key 'column' (the input column's name) is required")
    return column


def _dense(table: dict, where: str) -> Dense:
    d = Dense(
        column=_column(table, where),
        fill=_take(table, "fill", float, 0.0, where),
        transform=_take(table, "transform", str, "none", where),
    )
    _choice(d.transform, TRANSFORMS, "transform", where)
    _no_more(table, where)
    return d


def _categorical(table: dict, where: str) -> Categorical:
    c = Categorical(column=_column(table, where))
    for key, kind in (
        ("name", str),
        ("type", str),
        ("encode", str),
        ("min_freq", int),
        ("rows", int),
        ("list", bool),
        ("max_len", int),
        ("keep", str),
        ("separator", str),
        ("pooling", str),
    ):
        setattr(c, key, _take(table, key, kind, getattr(c, key), where))
    _no_more(table, where)
    c.name = c.name or c.column
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", c.name):
        raise SchemaError(
            f"{where}: feature name {c.name!r} must be letters, digits, '_', '.' or '-' (it names files): "
            "give a 'name'"
        )
    _choice(c.type, TYPES, "type", where)
    _choice(c.encode, ENCODINGS, "encode", where)
    _choice(c.keep, KEEP, "keep", where)
    _choice(c.pooling, ("sum", "mean"), "pooling", where)
    if c.min_freq < 1 or c.max_len < 0 or c.rows < 0:
        raise SchemaError(
            f"{where}: min_freq must be >= 1, max_len and rows >= 0 "
            f"(got {c.min_freq}, {c.max_len}, {c.rows})"
        )
    if c.encode == "hash" and c.rows < 2:
        raise SchemaError(f"{where}: encode = 'hash' needs rows >= 2 (row 0 is for missing values)")
    if c.encode == "raw" and c.type != "int":
        raise SchemaError(
            f"{where}: encode = 'raw' keeps int64 ids as they are: it needs type = 'int'"
        )
    if not c.list and (c.max_len or c.separator):
        raise SchemaError(f"{where}: max_len and separator apply to list = true columns only")
    return c


def load_schema(path: str | Path) -> Schema:
    """Parse and check a schema TOML file (SchemaError naming the file, section and key)."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SchemaError(f"schema file {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise SchemaError(f"schema {path}: not valid TOML ({e})") from None
    label = raw.pop("label", None)
    if not isinstance(label, dict):
        raise SchemaError(f"schema {path}: a [label] section with the label's column is required")
    schema = Schema(path=str(path), label=_column(label, f"schema {path} [label]"))
    _no_more(label, f"schema {path} [label]")
    weight = raw.pop("weight", None)
    if weight is not None:
        where = f"schema {path} [weight]"
        schema.weight = _column(weight if isinstance(weight, dict) else {}, where)
        _no_more(weight, where)
    schema.format = _choice(
        _take(raw, "format", str, "auto", f"schema {path}"), FORMATS, "format", f"schema {path}"
    )
    csv = raw.pop("csv", {})
    schema.csv_delimiter = _take(csv, "delimiter", str, ",", f"schema {path} [csv]")
    _no_more(csv, f"schema {path} [csv]")
    for key, make, out in (
        ("dense", _dense, schema.dense),
        ("categorical", _categorical, schema.categorical),
    ):
        entries = raw.pop(key, [])
        if not isinstance(entries, list):
            raise SchemaError(f"schema {path}: {key} must be an array of tables ([[{key}]])")
        out += [make(dict(t), f"schema {path} [[{key}]] #{i + 1}") for i, t in enumerate(entries)]
    _no_more(raw, f"schema {path}")
    if not schema.categorical:
        raise SchemaError(f"schema {path}: at least one [[categorical]] column is required")
    names = [c.name for c in schema.categorical]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise SchemaError(f"schema {path}: feature name {repeated[0]!r} is used twice")
    return schema
