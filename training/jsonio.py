"""Strict JSON for everything the run and the benchmarks write: a missing or non-finite figure is
``null``, never the bare NaN / Infinity that Python's json writes by default and other readers refuse."""

from __future__ import annotations

import json
import math
import os


def finite_or_none(obj):
    """obj with every non-finite float (NaN, +-inf), at any depth, replaced by None; tuples become lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:  # numpy / torch scalars
        return finite_or_none(obj.item())
    return obj


def dumps(obj, **kwargs) -> str:
    """json.dumps of finite_or_none(obj); allow_nan=False makes any value it missed an error, not bad JSON."""
    return json.dumps(finite_or_none(obj), allow_nan=False, **kwargs)


def dump(obj, f, **kwargs) -> None:
    f.write(dumps(obj, **kwargs))


def write_json_atomic(path: str, obj, **kwargs) -> None:
    """Strict JSON written to a temporary name then renamed, so a crash never leaves a half-written file."""
    text = dumps(obj, **{"indent": 2, "sort_keys": True, **kwargs})
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
