"""Warm start (train.init_from DIR): a new run begins from another run's tables, e.g. the next day of incremental
training. DIR is a checkpoint (manifest.json, any world size) or an export (meta.json, training.export).

- Tables of the config that DIR also has are loaded: their rows (static tables: ids below the new num_embeddings),
  freq and last_step, and from a checkpoint trained with the same sparse optimizer its state too. Dynamic tables
  get their keys re-inserted under this run's owner function, pending (counted, unadmitted) keys included.
- Tables DIR lacks start fresh; keys DIR lacks are admitted as they come. Tables only DIR has are ignored.
- A same-name table with another dim, or static in one and dynamic in the other, is an error naming the table.
- From a checkpoint, dense parameters of the same name and shape are loaded (the rest start fresh: e.g. the
  interaction layers after adding a table); the dense optimizer starts fresh, as does the data stream (step 0).
- The embeddings' step counter (last_step, evict_after_steps, export.since_step) continues from DIR's step, so an
  incremental export after the new run writes exactly the rows it updated.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch

from training.checkpoint import Checkpointer, read_manifest
from training.config import Config
from training.distributed import DistContext, unwrap
from training.export import EXPORT_FILES


def resume_or_warm_start(
    cfg: Config, parts, env: DistContext, ckpt: Checkpointer
) -> tuple[int, dict | None]:
    """(first step, warm-start report or None): resume from a checkpoint of this run if there is one, else
    start from train.init_from if set, else fresh."""
    first_step = ckpt.restore()
    if ckpt.last_path is None and cfg.train.init_from:
        return first_step, warm_start(cfg.train.init_from, parts, env.rank)
    return first_step, None


def _tables_of_checkpoint(manifest: dict) -> dict[str, dict]:
    dynamic = manifest.get("dynamic", {})
    return {
        name: {"dim": dim, "dynamic": name in dynamic}
        for name, (_rows, dim) in manifest["tables"].items()
    }


def _tables_of_export(path: str) -> tuple[dict[str, dict], int]:
    """({table: {dim, dynamic}}, step) of an export; exports without meta.json hold static tables."""
    meta_path = os.path.join(path, "meta.json")
    if os.path.isfile(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        return {
            name: {"dim": t["dim"], "dynamic": t["dynamic"]} for name, t in meta["tables"].items()
        }, meta["step"]
    tables, step = {}, 0
    for name in sorted(os.listdir(path)):
        if os.path.isfile(os.path.join(path, name, "keys.npy")):
            values = np.load(os.path.join(path, name, "values.npy"), mmap_mode="r")
            tables[name] = {"dim": values.shape[1], "dynamic": False}
            last = np.load(os.path.join(path, name, "last_step.npy"))
            step = max(step, int(last.max()) if last.size else 0)
    return tables, step


def compatible_tables(source: dict[str, dict], emb, where: str) -> dict[str, int]:
    """{name: index} of this run's tables to load from the source; raises naming a same-name table of another
    kind or dim."""
    found = {}
    for t, table in enumerate(emb.tables):
        theirs = source.get(table.name)
        if theirs is None:
            continue
        kind, their_kind = (
            ("dynamic" if table.dynamic else "static"),
            ("dynamic" if theirs["dynamic"] else "static"),
        )
        if kind != their_kind:
            raise ValueError(
                f"{where}: table {table.name!r} is {their_kind} there and {kind} here; a warm start "
                "cannot convert it (rename the table to start it fresh)"
            )
        if theirs["dim"] != table.dim:
            raise ValueError(
                f"{where}: table {table.name!r} has dim {theirs['dim']} there and {table.dim} here"
            )
        found[table.name] = t
    return found


def _from_checkpoint(path: str, parts, where: str) -> tuple[dict, dict[str, int], list[str]]:
    """(source tables, tables loaded, dense parameters left fresh)."""
    emb, manifest = parts.embeddings, read_manifest(path)
    source = _tables_of_checkpoint(manifest)
    load = compatible_tables(source, emb, where)
    state_names = emb.optimizer_state_names()
    # state tensors missing from the source start at zero
    optional = ("freq", "last_step", *state_names)
    same_optimizer = manifest["sparse_optimizer"] == emb.optimizer.name
    for name in sorted(n for n in manifest["files"] if n.startswith("shard_")):
        shard = torch.load(
            os.path.join(path, name), map_location="cpu", weights_only=True, mmap=True
        )
        for table_name, state in shard["tables"].items():
            if table_name in load:
                # another optimizer's state has other shapes: keep weights and statistics
                if not same_optimizer:
                    state = {k: v for k, v in state.items() if k not in state_names}
                emb.load_table_state(load[table_name], state, f"{where} ({name})", optional)
    emb.num_updates = int(manifest["step"])
    dense = torch.load(os.path.join(path, "dense.pt"), map_location="cpu", weights_only=True)[
        "model"
    ]
    model = unwrap(parts.model)
    own = model.state_dict()
    fits = {k: v for k, v in dense.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(fits, strict=False)
    return source, load, sorted(set(own) - set(fits))


def _from_export(path: str, emb, where: str) -> tuple[dict, dict[str, int], list[str]]:
    source, step = _tables_of_export(path)
    load = compatible_tables(source, emb, where)
    optional = ("freq", "last_step", *emb.optimizer_state_names())
    for table_name, t in load.items():
        arrays = {
            k: torch.from_numpy(np.load(os.path.join(path, table_name, f"{k}.npy")))
            for k in EXPORT_FILES
        }
        ids = "keys" if emb.tables[t].dynamic else "rows"
        state = {
            ids: arrays["keys"],
            "weight": arrays["values"],
            "freq": arrays["freq"],
            "last_step": arrays["last_step"],
        }
        emb.load_table_state(t, state, where, optional)
    emb.num_updates = step
    return source, load, ["(an export has no dense weights)"]


def warm_start(path: str, parts, rank: int) -> dict[str, list[str]]:
    """Load what fits from a checkpoint or export directory (module docstring); returns what was loaded and skipped."""
    emb, where = parts.embeddings, f"train.init_from={path!r}"
    if os.path.isfile(os.path.join(path, "manifest.json")):
        source, load, dense_skipped = _from_checkpoint(path, parts, where)
    elif os.path.isdir(path):
        source, load, dense_skipped = _from_export(path, emb, where)
    else:
        raise FileNotFoundError(
            f"{where} is neither a checkpoint (manifest.json) nor an export directory"
        )
    report = {
        "tables": sorted(load),
        "fresh_tables": [t.name for t in emb.tables if t.name not in load],
        "ignored_tables": sorted(set(source) - set(load)),
        "fresh_dense": dense_skipped,
    }
    if rank == 0:
        print(
            f"warm start from {path} at embedding step {emb.num_updates}: "
            + "; ".join(f"{k} {v}" for k, v in report.items()),
            flush=True,
        )
    return report
