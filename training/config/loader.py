"""Loading the config tree: defaults, then a TOML file, then ``--section.key value`` overrides.

Unknown keys, renamed keys, values of the wrong type and values outside a ``Literal``'s choices are
errors that name the key.
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


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce_list(key: str, tp, value):
    (item_tp,) = typing.get_args(tp)
    if isinstance(value, str):
        if dataclasses.is_dataclass(item_tp):
            raise ConfigError(f"config key '{key}' can only be set in the TOML file")
        value = [v.strip() for v in value.strip().strip("[]").split(",") if v.strip()]
    if not isinstance(value, list):
        raise ConfigError(f"config key '{key}' expects a list, got {value!r}")
    return [_coerce(f"{key}[{i}]", item_tp, v) for i, v in enumerate(value)]


def _coerce_scalar(tp, value):
    """value as tp (TOML values as they are, CLI strings parsed), or None when it is not one."""
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
    elif tp in (int, float):
        if (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and (tp is float or isinstance(value, int))
        ):
            return tp(value)
        if isinstance(value, str):
            try:
                return tp(value.replace("_", "") if tp is int else value)
            except ValueError:
                pass
    elif tp is str and isinstance(value, str):
        return value
    return None


def _coerce(key: str, tp, value):
    """Check (TOML) or parse (CLI strings) a value against a field type."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' expects a table, got {value!r}")
        return _build(tp, value, key)
    if origin is list:
        return _coerce_list(key, tp, value)
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"config key '{key}' is {value!r}; expected one of {choices}")
        return value
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"config key '{key}': union types are not supported")
    coerced = _coerce_scalar(tp, value)
    if coerced is None:
        raise ConfigError(f"config key '{key}' expects {_type_name(tp)}, got {value!r}")
    return coerced


def _fields(cls) -> dict[str, typing.Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unknown(key: str, known) -> ConfigError:
    if key in RENAMED_KEYS:
        return ConfigError(f"config key '{key}' is now called '{RENAMED_KEYS[key]}'")
    return ConfigError(f"unknown config key '{key}' (known in this section: {', '.join(known)})")


def _build(cls, values: dict, prefix: str = ""):
    known = _fields(cls)
    kwargs = {}
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in known:
            raise _unknown(key, known)
        kwargs[name] = _coerce(key, known[name], value)
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
            node[part] = value
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
    cfg = _build(Config, tree)
    validate(cfg)
    return cfg


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)
