"""What the search writes for the retrain: the per-table dims as TOML (a config fragment and the whole retrain
config) and the warm-start export of the pretrained tables' kept dimensions."""

from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np
import torch

from training.config import Config
from training.config.schema import TableConfig
from training.export import write_export


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return (
            ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))
            if not math.isfinite(v)
            else repr(v)
        )
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string of printable text is a TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def _changed(obj, default) -> dict:
    """The fields of a config dataclass that differ from the default instance's."""
    return {
        f.name: getattr(obj, f.name)
        for f in dataclasses.fields(obj)
        if getattr(obj, f.name) != getattr(default, f.name)
    }


def table_entries(tables: list[TableConfig], dims: list[int]) -> list[dict]:
    """[[embedding.tables]] entries: each table's non-default keys (its name always) and its dim."""
    out = []
    for t, dim in zip(tables, dims, strict=True):
        entry = {"name": t.name, **_changed(t, TableConfig())}
        entry["dim"] = dim
        out.append(entry)
    return out


def tables_toml(entries: list[dict]) -> str:
    lines = []
    for entry in entries:
        lines.append("[[embedding.tables]]")
        lines += [f"{k} = {_value(v)}" for k, v in entry.items()]
        lines.append("")
    return "\n".join(lines)


def config_toml(cfg: Config, entries: list[dict], settings: dict[str, dict]) -> str:
    """A whole config: cfg's non-default keys per section, settings {section: {key: value}} over them, and
    the given tables."""
    default = Config()
    lines = []
    for f in dataclasses.fields(cfg):
        section = _changed(getattr(cfg, f.name), getattr(default, f.name))
        section.pop("tables", None)
        section.update(settings.get(f.name, {}))
        if section:
            lines.append(f"[{f.name}]")
            lines += [f"{k} = {_value(v)}" for k, v in section.items()]
            lines.append("")
    return "\n".join(lines) + "\n" + tables_toml(entries)


def warm_start_export(emb, kept: list[list[int]], out_dir: str, dense: dict) -> str:
    """The pretrained tables (emb, one process) cut to their kept dimensions, written as an export that
    train.init_from reads: every looked-up row's kept columns, its lookup count and last step, and the
    pretrained dense weights (the warm start loads those whose name and shape the retrain's network has)."""
    tables, arrays = {}, {}
    for t, table in enumerate(emb.tables):
        keys, values, freq, last_step = emb.export_rows(t, 1, 0)
        order = torch.argsort(keys)
        values = values[order][:, kept[t]].contiguous()
        arrays[table.name] = [
            keys[order].numpy(),
            values.numpy().astype(np.float32),
            freq[order].numpy(),
            last_step[order].numpy(),
        ]
        tables[table.name] = {
            "dim": len(kept[t]),
            "dynamic": table.dynamic is not None,
            "rows": int(keys.numel()),
            "num_embeddings": table.num_embeddings,
        }
    dense = {k: v.detach().cpu().clone() for k, v in dense.items()}
    return write_export(out_dir, emb.num_updates, tables, arrays, dense)


def write_text(path: str, text: str) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return path
