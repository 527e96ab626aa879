"""Incremental updates of a loaded inference model from an embedding export (train.py --export.enabled,
usually with --export.since_step): <dir>/step_<N>/ (or <dir>, whose `latest` names it) with meta.json, a manifest
of xxh3_64 checksums and per table keys, values, freq, last_step (.npy, sorted by key).

Static tables: the delta's rows overwrite theirs. Dynamic tables: keys the model holds get their new rows,
new keys are inserted (keys stay sorted), and keys the table no longer holds go: an incremental export lists
every key a full export would hold at its step (`<table>/live_keys.npy`), and the model keeps only those.
A delta without that file (an export from older code) cannot say which keys expired: the report names its
tables under `not_recorded` (their expired keys keep their last rows until the next full model). The dense
network is not in a delta: it stays the model's.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from inference.files import DTYPES, ModelError, read_json, verify_file


def _resolve(path: str) -> str:
    latest = os.path.join(path, "latest")
    if os.path.isfile(latest):
        with open(latest) as f:
            return os.path.join(path, f.read().strip())
    return path


def _array(path: str, name: str, manifest: dict, what: str) -> np.ndarray:
    if name not in manifest["files"]:
        raise ModelError(f"{what}: manifest.json does not list {name}")
    return np.load(verify_file(path, name, manifest, what))


def _merge_dynamic(table, keys: torch.Tensor, values: torch.Tensor, live) -> tuple[int, int, int]:
    """Overwrite known keys, insert new ones, keep only the live ones (when known); (updated, added,
    removed)."""
    old_keys, old_rows = table.keys, table.rows[:-1]
    at = torch.searchsorted(old_keys, keys)
    n = old_keys.numel()
    known = (at < n) & (old_keys[at.clamp(max=max(n - 1, 0))] == keys) if n else at < 0
    rows = old_rows.clone()
    rows[at[known]] = values[known]
    all_keys, all_rows = torch.cat([old_keys, keys[~known]]), torch.cat([rows, values[~known]])
    dropped = 0
    if live is not None:
        keep = torch.isin(all_keys, live)
        dropped = int((~keep).sum())
        all_keys, all_rows = all_keys[keep], all_rows[keep]
    order = torch.argsort(all_keys)
    table.set_rows(all_rows[order], all_keys[order])
    return int(known.sum()), int((~known).sum()), dropped


def apply_delta(model, export: str) -> dict:
    """Apply the export at `export` to model's tables (an inference.model.InferenceModel) in place;
    returns what changed per table, and what the delta could not say."""
    path = _resolve(export)
    what = f"delta {path}"
    manifest = read_json(os.path.join(path, "manifest.json"), what)
    meta = _array_meta(path, manifest, what)
    since, step = int(meta.get("since_step", 0)), int(meta["step"])
    if since > model.step:
        raise ModelError(
            f"{what} holds rows updated after step {since}, the model is at step {model.step}: the rows "
            f"updated in steps {model.step + 1}..{since} would be missing; apply the delta since step "
            f"{model.step} first, or export a full model"
        )
    report = {"step": step, "tables": {}, "not_recorded": []}
    for name, spec in meta["tables"].items():
        if name not in model.tables:
            raise ModelError(
                f"{what}: table {name!r} is not in the model (it has {sorted(model.tables)})"
            )
        table = model.tables[name]
        if spec["dim"] != table.spec["dim"] or bool(spec["dynamic"]) != table.dynamic:
            raise ModelError(f"{what}: table {name!r} has another dim or kind than the model's")
        keys = torch.from_numpy(_array(path, f"{name}/keys.npy", manifest, what))
        values = torch.from_numpy(_array(path, f"{name}/values.npy", manifest, what))
        values = values.to(DTYPES[table.spec["dtype"]])
        live = None
        if f"{name}/live_keys.npy" in manifest["files"]:
            live = torch.from_numpy(_array(path, f"{name}/live_keys.npy", manifest, what))
        elif table.dynamic and since:
            report["not_recorded"].append(name)
        if table.dynamic:
            updated, added, dropped = _merge_dynamic(table, keys, values, live if since else keys)
        else:
            table.rows[keys] = values
            updated, added, dropped = keys.numel(), 0, 0
        report["tables"][name] = {"updated": updated, "added": added, "removed": dropped}
    model.step = step
    return report


def _array_meta(path: str, manifest: dict, what: str) -> dict:
    if "meta.json" not in manifest.get("files", {}):
        raise ModelError(
            f"{what} is not an embedding export (its manifest.json lists no meta.json)"
        )
    return read_json(verify_file(path, "meta.json", manifest, what), what)
