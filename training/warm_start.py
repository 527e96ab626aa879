"""Warm start (train.init_from DIR): a new run begins from another run's tables, e.g. the next day of incremental
training. DIR is a checkpoint (manifest.json, any world size) or an export (training.export): an export
directory, whose `latest` is read, or one export step_<N>; every file read is checked against the export's manifest,
and a missing, corrupt or mismatched file is an error naming the table and file.

- Tables of the config that DIR also has are loaded: their rows (static tables: ids below the new num_embeddings),
  freq and last_step, and from a checkpoint trained with the same sparse optimizer its state too. Dynamic tables
  get their keys re-inserted under this run's owner function, pending (counted, unadmitted) keys included.
- Tables DIR lacks start fresh; keys DIR lacks are admitted as they come. Tables only DIR has are ignored.
- A same-name table with another dim, or static in one and dynamic in the other, is an error naming the table.
- From a checkpoint, dense parameters of the same name and shape are loaded (the rest start fresh: e.g. the
  interaction layers after adding a table); so are they from an export that holds dense.pt (the dimension
  search writes one). The dense optimizer starts fresh, as does the data stream (step 0).
- The embeddings' step counter (last_step, evict_after_steps, export.since_step) continues from DIR's step, so an
  incremental export after the new run writes exactly the rows it updated.
"""

from __future__ import annotations

import os

import torch

from training.checkpoint import DEFAULT_BUFFER, Checkpointer, read_manifest
from training.checkpoint_files import CheckpointError, check_file
from training.checkpoint_tables import read_shard, torch_load
from training.config import Config
from training.distributed import DistContext, unwrap
from training.export import Export, ExportError


def resume_or_warm_start(
    cfg: Config, parts, env: DistContext, ckpt: Checkpointer
) -> tuple[int, dict | None]:
    """(first step, warm-start report or None): resume from a checkpoint of this run if there is one, else
    start from train.init_from if set, else fresh."""
    first_step = ckpt.restore()
    if ckpt.last_path is None and cfg.train.init_from:
        buffer_bytes = cfg.train.checkpoint_buffer_bytes
        return first_step, warm_start(cfg.train.init_from, parts, env.rank, buffer_bytes)
    return first_step, None


def _tables_of_checkpoint(manifest: dict) -> dict[str, dict]:
    dynamic = manifest.get("dynamic", {})
    return {
        name: {"dim": dim, "dynamic": name in dynamic}
        for name, (_rows, dim) in manifest["tables"].items()
    }


def _tables_of_export(export: Export) -> tuple[dict[str, dict], int]:
    """({table: {dim, dynamic}}, step) of an export; exports without meta.json hold static tables."""
    if export.meta is not None:
        tables = export.meta["tables"]
        return {
            n: {"dim": t["dim"], "dynamic": t["dynamic"]} for n, t in tables.items()
        }, export.meta["step"]
    tables, step = {}, 0
    for name in export.table_names():
        arrays = export.table(name)
        tables[name] = {"dim": arrays["values"].shape[1], "dynamic": False}
        last = arrays["last_step"]
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


def _from_checkpoint(
    path: str, parts, where: str, buffer_bytes: int
) -> tuple[dict, dict[str, int], list[str]]:
    """(source tables, tables loaded, dense parameters left fresh); rows read buffer_bytes at a time."""
    emb, manifest = parts.embeddings, read_manifest(path)
    # every file is read (the rows are re-picked): check each one's size and checksum first
    for name, entry in sorted(manifest["files"].items()):
        try:
            check_file(path, name, entry)
        except CheckpointError as e:
            raise CheckpointError(f"{where}: {e}") from None
    source = _tables_of_checkpoint(manifest)
    load = compatible_tables(source, emb, where)
    state_names = emb.optimizer_state_names()
    # state tensors missing from the source start at zero
    optional = ("freq", "last_step", *state_names)
    same_optimizer = manifest["sparse_optimizer"] == emb.optimizer.name
    # another optimizer's state has other shapes: keep weights and statistics
    skip = () if same_optimizer else state_names
    for name in sorted(n for n in manifest["files"] if n.startswith("shard_")):
        where_file = f"{where} ({name})"
        shard_path = os.path.join(path, name)
        read_shard(emb, shard_path, load, where_file, buffer_bytes, optional=optional, skip=skip)
    emb.num_updates = int(manifest["step"])
    return source, load, _load_dense(parts, os.path.join(path, "dense.pt"))


def _load_dense(parts, path: str) -> list[str]:
    """Load the dense parameters of path (a dense.pt) that have this model's names and shapes; returns the
    names of the others (they keep their fresh values)."""
    dense = torch_load(path)["model"]
    model = unwrap(parts.model)
    own = model.state_dict()
    fits = {k: v for k, v in dense.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(fits, strict=False)
    return sorted(set(own) - set(fits))


def _from_export(export: Export, parts, where: str) -> tuple[dict, dict[str, int], list[str]]:
    emb = parts.embeddings
    source, step = _tables_of_export(export)
    load = compatible_tables(source, emb, where)
    optional = ("freq", "last_step", *emb.optimizer_state_names())
    for table_name, t in load.items():
        arrays = {k: torch.from_numpy(v) for k, v in export.table(table_name).items()}
        ids = "keys" if emb.tables[t].dynamic else "rows"
        state = {
            ids: arrays["keys"],
            "weight": arrays["values"],
            "freq": arrays["freq"],
            "last_step": arrays["last_step"],
        }
        emb.load_table_state(t, state, f"{where} ({export.path})", optional)
    emb.num_updates = step
    dense = export.dense_path()  # an export of the dimension search carries them
    return (
        source,
        load,
        ["(an export has no dense weights)"] if dense is None else _load_dense(parts, dense),
    )


def _is_checkpoint(path: str) -> bool:
    try:
        return read_manifest(path).get("kind") != "export"
    except (OSError, ValueError, AttributeError):
        return False


def warm_start(
    path: str, parts, rank: int, buffer_bytes: int = DEFAULT_BUFFER
) -> dict[str, list[str]]:
    """Load what fits from a checkpoint or export directory (module docstring); returns what was loaded and skipped.
    A checkpoint's rows are read buffer_bytes at a time."""
    emb, where = parts.embeddings, f"train.init_from={path!r}"
    origin = path
    if _is_checkpoint(path):
        source, load, dense_skipped = _from_checkpoint(path, parts, where, buffer_bytes)
    elif os.path.isdir(path):
        try:  # path's latest export; each file is checked against its manifest
            export = Export(path)
            source, load, dense_skipped = _from_export(export, parts, where)
        except ExportError as e:
            raise ExportError(f"{where}: {e}") from None
        origin = export.path
        if export.manifest is None:
            origin += " (written before export manifests: its files are not verified)"
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
            f"warm start from {origin} at embedding step {emb.num_updates}: "
            + "; ".join(f"{k} {v}" for k, v in report.items()),
            flush=True,
        )
    return report
