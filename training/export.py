"""Embedding export for serving and warm starts (DeepRec's format): per table the exported rows' keys,
values, lookup counts and last update step, a meta.json, and a manifest of every file's checksum.

    <dir>/step_<N>/<table>/{keys,values,freq,last_step}.npy   sorted by key: row ids (static), raw ids (dynamic)
    <dir>/step_<N>/meta.json        step, filters, each table's dim, kind and rows
    <dir>/step_<N>/manifest.json    every file's size and xxh3_64, written last
    <dir>/latest                    the name of the newest complete export ("step_<N>")

An export is written into <dir>/.tmp_step_<N>/, verified against its manifest, then renamed into place and
named by `latest`: a crash mid-export leaves the previous export whole and current. The newest KEEP_EXPORTS
exports are kept. Readers (load_export, warm starts) take <dir> (its latest), or one step_<N> directory,
and verify each file they read against the manifest.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import time

import numpy as np
import torch
import xxhash

EXPORT_FILES = ("keys", "values", "freq", "last_step")
KEEP_EXPORTS = 2  # the new export and the one before it
LATEST = "latest"
DENSE_FILE = "dense.pt"  # optional: dense weights for a warm start (written by write_export only)
_STEP_DIR = re.compile(r"^step_(\d+)$")
_SCRATCH_DIR = re.compile(r"^\.(tmp|old)_step_(\d+)$")
_CHUNK = 1 << 24


class ExportError(ValueError):
    """An export that cannot be read as written: the message names the export, table and file."""


# ---- write ----------------------------------------------------------------------------------------------
def _write_file(path: str, data: bytes) -> dict:
    """Write data durably; returns its manifest entry."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return {"bytes": len(data), "xxh3_64": xxhash.xxh3_64_hexdigest(data)}


def write_table(tmp: str, table: str, arrays: list[np.ndarray]) -> dict[str, dict]:
    """One table's files (EXPORT_FILES order) into the temporary export; returns their manifest entries."""
    os.makedirs(os.path.join(tmp, table), exist_ok=True)
    entries = {}
    for name, array in zip(EXPORT_FILES, arrays, strict=True):
        entries.update(_write_array(tmp, table, name, array))
    return entries


LIVE_KEYS = "live_keys"  # an incremental export's dynamic tables: the keys a full export would hold


def _live_keys(emb, t: int, min_freq: int) -> np.ndarray | None:
    """Collective: dynamic table t's keys looked up at least max(min_freq, 1) times, on every rank, sorted."""
    emb, t = emb.locate_table(t)  # the collection of its dim
    keys, rows = emb.dynamic.live(t)
    mine = keys[emb.storage.of(t).freq[rows] >= max(min_freq, 1)].cpu()
    return torch.sort(torch.cat(emb.exchange.gather_objects(mine))).values.numpy()


def _write_array(tmp: str, table: str, name: str, array: np.ndarray) -> dict[str, dict]:
    buf = io.BytesIO()
    np.save(buf, array)
    return {
        f"{table}/{name}.npy": _write_file(os.path.join(tmp, table, f"{name}.npy"), buf.getvalue())
    }


def export_embeddings(
    emb, out_dir: str, min_freq: int, rank: int, since_step: int = 0, fail_point=None
) -> dict[str, int]:
    """Collective. Rank 0 writes the rows of emb (a ShardedEmbeddingCollection) looked up at least
    max(min_freq, 1) times and updated after since_step (an incremental export) as out_dir/step_<N>
    (module docstring). Only the exported rows are gathered, one table at a time. Every rank returns
    once the export is in place, or raises rank 0's error. Returns {table: rows exported}. fail_point():
    called on rank 0 once the first table is written (the test-only train.fail_at "export")."""
    step = emb.num_updates
    tmp = os.path.join(out_dir, f".tmp_step_{step}")
    counts, tables, files, failure = {}, {}, {}, None
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    for t, table in enumerate(emb.tables):
        gathered = [
            p
            for p in emb.exchange.gather_objects(emb.export_rows(t, min_freq, since_step))
            if p is not None
        ]
        keys = torch.cat([p[0] for p in gathered])
        counts[table.name] = keys.numel()
        tables[table.name] = {
            "dim": table.dim,
            "dynamic": table.dynamic is not None,
            "rows": keys.numel(),
            "num_embeddings": table.num_embeddings,
        }
        # an incremental export of a dynamic table also lists every key a full export would hold now
        # (8 bytes a key), so a delta can drop the keys evicted since since_step
        live = _live_keys(emb, t, min_freq) if since_step and table.dynamic is not None else None
        if rank == 0 and failure is None:
            order = torch.argsort(keys)
            arrays = [torch.cat([p[i] for p in gathered])[order].numpy() for i in range(4)]
            try:  # keep joining the gathers: the other ranks must not wait for a rank that stopped
                files.update(write_table(tmp, table.name, arrays))
                if live is not None:
                    files.update(_write_array(tmp, table.name, LIVE_KEYS, live))
                if t == 0 and fail_point is not None:
                    fail_point()
            except Exception as e:
                failure = e
    if rank == 0 and failure is None:
        meta = {"step": step, "since_step": since_step, "min_freq": min_freq, "tables": tables}
        try:
            _publish(out_dir, tmp, step, meta, files)
        except Exception as e:
            failure = e
    _raise_rank0_failure(emb, rank, failure, out_dir)
    return counts


def _raise_rank0_failure(emb, rank: int, failure: Exception | None, out_dir: str) -> None:
    said = emb.exchange.gather_objects(
        None if failure is None else f"{type(failure).__name__}: {failure}"
    )
    if failure is not None:
        raise failure
    if said[0] is not None:
        raise ExportError(
            f"export to {out_dir} failed on rank 0 ({said[0]}); the previous one stays"
        )


def _publish(out_dir: str, tmp: str, step: int, meta: dict, files: dict) -> None:
    """meta.json and the manifest (last) into tmp, verify, rename into place, point `latest` at it."""
    files["meta.json"] = _write_file(
        os.path.join(tmp, "meta.json"), json.dumps(meta, indent=1).encode()
    )
    manifest = {"kind": "export", "step": step, "written": time.time(), "files": files}
    _write_file(os.path.join(tmp, "manifest.json"), json.dumps(manifest, indent=1).encode())
    for name in files:  # what is on disk is what the manifest says
        _verify_file(tmp, name, manifest)
    final, old = os.path.join(out_dir, f"step_{step}"), os.path.join(out_dir, f".old_step_{step}")
    if os.path.exists(final):  # a re-export of the same step
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    _write_latest(out_dir, f"step_{step}")
    _fsync_dir(out_dir)
    _prune(out_dir)


def write_export(
    out_dir: str,
    step: int,
    tables: dict[str, dict],
    arrays: dict[str, list[np.ndarray]],
    dense: dict[str, torch.Tensor] | None = None,
) -> str:
    """Write an export made outside a run (one process): tables {name: meta.json entry}, arrays {name: its
    EXPORT_FILES arrays, sorted by key}, and optionally dense weights (a state dict, DENSE_FILE: a warm start
    loads those of the same name and shape); published as export_embeddings publishes one. Returns its path."""
    tmp = os.path.join(out_dir, f".tmp_step_{step}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    files = {}
    if dense is not None:
        buf = io.BytesIO()
        torch.save({"model": dense}, buf)
        files[DENSE_FILE] = _write_file(os.path.join(tmp, DENSE_FILE), buf.getvalue())
    for name, table_arrays in arrays.items():
        files.update(write_table(tmp, name, table_arrays))
    meta = {"step": step, "since_step": 0, "min_freq": 1, "tables": tables}
    _publish(out_dir, tmp, step, meta, files)
    return os.path.join(out_dir, f"step_{step}")


def _write_latest(out_dir: str, name: str) -> None:
    tmp = os.path.join(out_dir, f".{LATEST}.tmp.{os.getpid()}")
    _write_file(tmp, f"{name}\n".encode())
    os.replace(tmp, os.path.join(out_dir, LATEST))


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _written(path: str) -> float:
    try:
        with open(os.path.join(path, "manifest.json")) as f:
            return float(json.load(f)["written"])
    except (OSError, ValueError, KeyError, TypeError):
        return os.path.getmtime(path)


def complete_exports(out_dir: str) -> list[str]:
    """The complete step_<N> directories (with a manifest) of out_dir, oldest written first."""
    found = [
        os.path.join(out_dir, n)
        for n in (os.listdir(out_dir) if os.path.isdir(out_dir) else [])
        if _STEP_DIR.match(n) and os.path.isfile(os.path.join(out_dir, n, "manifest.json"))
    ]
    return sorted(found, key=_written)


def _prune(out_dir: str) -> None:
    """Keep `latest` and the newest others up to KEEP_EXPORTS; drop leftovers of interrupted exports."""
    latest = os.path.join(out_dir, _read_latest(out_dir))
    others = [p for p in complete_exports(out_dir) if p != latest]
    for path in others[: max(len(others) - (KEEP_EXPORTS - 1), 0)]:
        shutil.rmtree(path, ignore_errors=True)
    for name in os.listdir(out_dir):
        if _SCRATCH_DIR.match(name):
            shutil.rmtree(os.path.join(out_dir, name), ignore_errors=True)


# ---- read -----------------------------------------------------------------------------------------------
def _read_latest(out_dir: str) -> str:
    with open(os.path.join(out_dir, LATEST)) as f:
        return f.read().strip()


def resolve_export(path: str) -> str:
    """The export directory that path names: path/latest's target, path itself (one export), or the newest
    complete export when `latest` is missing; an export written before manifests is path itself."""
    if _SCRATCH_DIR.match(os.path.basename(os.path.normpath(path))):
        raise ExportError(f"export {path} is an unfinished temporary directory, not an export")
    if os.path.isfile(os.path.join(path, LATEST)):
        name = _read_latest(path)
        target, old = os.path.join(path, name), os.path.join(path, f".old_{name}")
        if os.path.isfile(os.path.join(target, "manifest.json")):
            return target
        # a re-export of the same step stopped between its two renames: the previous one is whole
        if os.path.isfile(os.path.join(old, "manifest.json")):
            return old
        raise ExportError(f"export {path}: {LATEST} names {name!r}, which is not a complete export")
    if os.path.isfile(os.path.join(path, "manifest.json")):
        return path
    found = complete_exports(path)
    return found[-1] if found else path


def _verify_file(path: str, name: str, manifest: dict) -> str:
    """The file's full path once its size and checksum match the manifest; raises naming it otherwise."""
    table, _, file = name.rpartition("/")
    what = f"export {path}: " + (f"table {table!r} file {file}" if table else f"file {file}")
    full = os.path.join(path, name)
    if not os.path.isfile(full):
        raise ExportError(f"{what} is missing (manifest.json lists it)")
    digest = xxhash.xxh3_64()
    with open(full, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    want = manifest["files"][name]["xxh3_64"]
    if digest.hexdigest() != want:
        raise ExportError(
            f"{what} is corrupt: its xxh3_64 is {digest.hexdigest()}, manifest.json says {want}"
        )
    return full


class Export:
    """One export as written: meta (None for an export without meta.json), manifest (None for one written
    before manifests: its files are not verified), and table(name) for a table's verified arrays."""

    def __init__(self, path: str):
        self.path = resolve_export(path)
        if not os.path.isdir(self.path):
            raise ExportError(f"export {path} does not exist")
        self.manifest = self._read_json("manifest.json")
        self.meta = self._read_json("meta.json")

    def _read_json(self, name: str) -> dict | None:
        full = os.path.join(self.path, name)
        if name == "meta.json" and self.manifest is not None:
            _verify_file(self.path, name, self.manifest)
        elif not os.path.isfile(full):
            return None
        try:
            with open(full) as f:
                return json.load(f)
        except ValueError as e:
            raise ExportError(f"export {self.path}: {name} is not JSON ({e})") from None

    def dense_path(self) -> str | None:
        """The verified DENSE_FILE of the export, None when it has none."""
        if self.manifest is None or DENSE_FILE not in self.manifest["files"]:
            return None
        return _verify_file(self.path, DENSE_FILE, self.manifest)

    def table_names(self) -> list[str]:
        if self.meta is not None:
            return list(self.meta["tables"])
        return [
            n
            for n in sorted(os.listdir(self.path))
            if os.path.isfile(os.path.join(self.path, n, "keys.npy"))
        ]

    def table(self, table: str) -> dict[str, np.ndarray]:
        """The table's arrays by EXPORT_FILES name, checked against the manifest and against each other."""
        where = f"export {self.path}: table {table!r}"
        if table not in self.table_names():
            raise ExportError(f"{where} is not in the export (it has {self.table_names()})")
        arrays = {}
        for name in EXPORT_FILES:
            rel = f"{table}/{name}.npy"
            full = os.path.join(self.path, rel)
            if self.manifest is not None:
                _verify_file(self.path, rel, self.manifest)
            elif not os.path.isfile(full):
                raise ExportError(f"{where} file {name}.npy is missing")
            try:
                arrays[name] = np.load(full)
            except (ValueError, OSError) as e:
                raise ExportError(
                    f"{where} file {name}.npy is not a readable .npy file ({e})"
                ) from None
        rows = {name: len(a) for name, a in arrays.items()}
        if len(set(rows.values())) > 1:
            listed = ", ".join(f"{n} in {name}.npy" for name, n in rows.items())
            raise ExportError(f"{where} has mismatched rows: {listed}")
        if self.meta is not None and self.meta["tables"][table]["rows"] != rows["keys"]:
            raise ExportError(
                f"{where} has {rows['keys']} rows in keys.npy but meta.json says "
                f"{self.meta['tables'][table]['rows']}: its files come from another export"
            )
        return arrays


def load_export(out_dir: str, table: str) -> dict[str, np.ndarray]:
    """A table's verified arrays from out_dir's latest export (or the one export out_dir is)."""
    return Export(out_dir).table(table)
