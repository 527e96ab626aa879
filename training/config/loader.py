"""Loading the config tree: defaults, then a TOML file, then ``--section.key value`` overrides.

Unknown keys, renamed keys, values of the wrong type and values outside a ``Literal``'s choices are
errors that name the key. Types are strict: a TOML value must already have the field's type (an int
is accepted for a float), and only a command-line string is parsed into it.
"""

from __future__ import annotations

import dataclasses
import sys
import tomllib
import types
import typing

from training.config.schema import Config
from training.config.validate import ConfigError, validate

# keys that were given new names: the old name is an error naming the new one
RENAMED_KEYS = {"optimizer.warmup_steps": "optimizer.lr_warmup_steps"}


class CliValue(str):
    """A value typed on the command line: the only kind of string that is parsed into a field's type."""


def type_name(tp) -> str:
    """A field type as the docs and errors write it: int, list[int], 'sum' | 'mean', ..."""
    if typing.get_origin(tp) is typing.Literal:
        return " | ".join(repr(c) for c in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"list[{type_name(typing.get_args(tp)[0])}]"
    return getattr(tp, "__name__", str(tp))


_TOML_KINDS = {str: "string", int: "integer", float: "float", bool: "boolean", list: "array"}


def _wrong_type(key: str, tp, value, source: str) -> ConfigError:
    if isinstance(value, CliValue):
        where = f"(from --{key.split('[')[0]})"
    else:
        where = f"(a TOML {_TOML_KINDS.get(type(value), type(value).__name__)}) in {source}"
    return ConfigError(f"config key '{key}' expects {type_name(tp)}, got {value!r} {where}")


def _coerce_list(key: str, tp, value, source: str):
    (item_tp,) = typing.get_args(tp)
    if isinstance(value, CliValue):
        if dataclasses.is_dataclass(item_tp):
            raise ConfigError(f"config key '{key}' can only be set in the TOML file")
        items = value.strip().strip("[]").split(",")
        value = [CliValue(v.strip()) for v in items if v.strip()]
    if not isinstance(value, list):
        raise _wrong_type(key, tp, value, source)
    return [_coerce(f"{key}[{i}]", item_tp, v, source) for i, v in enumerate(value)]


def _parse_cli(tp, text: str):
    """A command-line string as tp, or None when it does not parse."""
    if tp is bool:
        if text.lower() in ("true", "1", "yes", "false", "0", "no"):
            return text.lower() in ("true", "1", "yes")
        return None
    if tp in (int, float):
        try:
            return tp(text.replace("_", "") if tp is int else text)
        except ValueError:
            return None
    return str(text) if tp is str else None


def _coerce_scalar(tp, value):
    """value as tp (a TOML value of that type, a command-line string parsed), or None when it is not one."""
    if isinstance(value, CliValue):
        return _parse_cli(tp, value)
    if tp is bool:
        return value if isinstance(value, bool) else None
    if tp in (int, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        # a TOML int is a fine float; a TOML float is not an int
        return tp(value) if tp is float or isinstance(value, int) else None
    return value if tp is str and isinstance(value, str) else None


def _coerce(key: str, tp, value, source: str):
    """Check (TOML) or parse (command-line strings) a value against a field type; source names the file."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' expects a table, got {value!r} in {source}")
        return _build(tp, value, source, key)
    if origin is list:
        return _coerce_list(key, tp, value, source)
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"config key '{key}' is {value!r}; expected one of {choices}")
        return str(value) if isinstance(value, str) else value
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"config key '{key}': union types are not supported")
    coerced = _coerce_scalar(tp, value)
    if coerced is None:
        raise _wrong_type(key, tp, value, source)
    return coerced


def _fields(cls) -> dict[str, typing.Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unknown(key: str, known) -> ConfigError:
    if key in RENAMED_KEYS:
        return ConfigError(f"config key '{key}' is now called '{RENAMED_KEYS[key]}'")
    return ConfigError(f"unknown config key '{key}' (known in this section: {', '.join(known)})")


def _build(cls, values: dict, source: str, prefix: str = ""):
    known = _fields(cls)
    kwargs = {}
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in known:
            raise _unknown(key, known)
        kwargs[name] = _coerce(key, known[name], value, source)
    return cls(**kwargs)


def _set_dotted(tree: dict, key: str, value: str) -> None:
    if key in RENAMED_KEYS:
        raise _unknown(key, ())
    parts = key.split(".")
    cls, node = Config, tree
    for depth, part in enumerate(parts):
        known = _fields(cls)
        if part not in known:
            raise ConfigError(f"unknown config key '{key}'")
        tp = known[part]
        if depth == len(parts) - 1:
            if dataclasses.is_dataclass(tp):
                raise ConfigError(f"config key '{key}' is a section; set one of its keys")
            node[part] = CliValue(value)
        else:
            if not dataclasses.is_dataclass(tp):
                raise ConfigError(
                    f"unknown config key '{key}' ('{'.'.join(parts[: depth + 1])}' is not a section)"
                )
            node = node.setdefault(part, {})
            cls = tp


def parse_overrides(argv: list[str]) -> tuple[str | None, list[tuple[str, str]]]:
    """Split argv into the --config path and (key, value) overrides."""
    config_path, overrides, i = None, [], 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}; use --section.key value")
        name, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(argv):
                raise ConfigError(f"option '--{name}' needs a value")
            value = argv[i + 1]
            i += 1
        if name == "config":
            config_path = value
        else:
            overrides.append((name, value))
        i += 1
    return config_path, overrides


def load_config(argv: list[str] | None = None, config_path: str | None = None) -> Config:
    """Defaults, then the TOML file (--config or config_path), then command-line overrides."""
    argv = sys.argv[1:] if argv is None else argv
    cli_path, overrides = parse_overrides(argv)
    path = cli_path or config_path
    tree: dict = {}
    if path:
        try:
            with open(path, "rb") as f:
                tree = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file {path!r} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path!r} is not valid TOML: {e}") from None
    for key, value in overrides:
        _set_dotted(tree, key, value)
    cfg = _build(Config, tree, f"config file {path}" if path else "the defaults")
    validate(cfg)
    return cfg


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)
