"""--export.model: at the end of training, a self-contained inference model (the layout: inference/model.py)
in <export dir>/model, written whole into <export dir>/.tmp_model, verified, then renamed into place.

The dense network is saved as a torch.export program (dense.pt2), or as TorchScript (dense.ts) where
torch.export fails: meta.json says which and why. The tables are gathered one at a time from this run's
shards to rank 0: static tables whole ([num_embeddings, dim]: rows never looked up keep their initial
values, as evaluation reads them), dynamic ones as their live keys, sorted, and rows. export.model_dtype
stores the rows of the tables in export.model_dtype_tables (all when empty) as float16 or bfloat16.
"""

from __future__ import annotations

import copy
import io
import json
import os
import shutil
import warnings

import numpy as np
import torch
import xxhash

from embedding.tables import pooled_shape
from inference.model import DTYPES, FORMAT, KIND, InferenceModel
from training.config import Config, ConfigError, to_dict
from training.distributed import DistContext, unwrap


def model_dir(cfg: Config) -> str:
    return os.path.join(cfg.export.dir or os.path.join(cfg.run.dir, "export"), "model")


def row_dtypes(cfg: Config, tables) -> dict[str, str]:
    """{table: stored row dtype}; ConfigError naming a listed table the run does not have."""
    names = [t.name for t in tables]
    listed = cfg.export.model_dtype_tables or names
    unknown = [n for n in listed if n not in names]
    if unknown:
        raise ConfigError(
            f"config key 'export.model_dtype_tables' lists {unknown}, which are not tables of this run "
            f"({', '.join(names)})"
        )
    return {n: cfg.export.model_dtype if n in listed else "float32" for n in names}


def _bytes_entry(data: bytes) -> dict:
    return {"bytes": len(data), "xxh3_64": xxhash.xxh3_64_hexdigest(data)}


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _rows_numpy(rows: torch.Tensor, dtype: str) -> np.ndarray:
    """float32 rows in the stored dtype (bfloat16 as its uint16 bits: numpy has no bfloat16)."""
    rows = rows.to(DTYPES[dtype])
    return rows.view(torch.uint16).numpy() if dtype == "bfloat16" else rows.numpy()


def _table_arrays(table, gathered: list) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(float32 rows, sorted keys or None) of a table from every rank's (ids, weight) part."""
    parts = [p for p in gathered if p is not None]
    ids = torch.cat([p[0] for p in parts]) if parts else torch.zeros(0, dtype=torch.int64)
    weight = torch.cat([p[1].float() for p in parts]) if parts else torch.zeros(0, table.dim)
    if table.dynamic:
        order = torch.argsort(ids)
        return weight[order], ids[order]
    rows = torch.zeros(table.num_embeddings, table.dim)
    rows[ids] = weight
    return rows, None


def dense_program(
    net: torch.nn.Module, num_dense: int, pooled_shape: tuple[int, ...]
) -> tuple[bytes, dict]:
    """(file bytes, meta) of the dense network on the CPU in float32: torch.export, else TorchScript.
    pooled_shape: the pooled input of a batch (the collection's pooled_shape)."""
    net = copy.deepcopy(net).cpu().float().eval()
    example = (torch.randn(3, num_dense), torch.randn(3, *pooled_shape[1:]))
    batch = torch.export.Dim.DYNAMIC
    buf = io.BytesIO()
    try:
        program = torch.export.export(net, example, dynamic_shapes=({0: batch}, {0: batch}))
        with (
            warnings.catch_warnings()
        ):  # the Linear weights are views of one buffer (models.network)
            warnings.simplefilter("ignore", UserWarning)
            torch.export.save(program, buf)
        return buf.getvalue(), {"file": "dense.pt2", "format": "torch.export"}
    except Exception as e:  # noqa: BLE001 - any failure of export falls back to TorchScript, said in meta
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        with torch.no_grad():
            torch.jit.save(torch.jit.trace(net, example, check_trace=False), buf)
        return buf.getvalue(), {"file": "dense.ts", "format": "torchscript", "export_error": reason}


def _write(tmp: str, name: str, data: bytes, files: dict) -> None:
    full = os.path.join(tmp, name)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    files[name] = _bytes_entry(data)


def _features(tables) -> list[dict]:
    return [{"name": f, "table": t.name, "pooling": t.pooling} for t in tables for f in t.features]


def export_model(cfg: Config, parts, env: DistContext) -> dict:
    """Collective: rank 0 writes the inference model; every rank returns {dir, step, dense format, bytes}
    or raises (rank 0's error on every rank)."""
    emb, final = parts.embeddings, model_dir(cfg)
    tmp = os.path.join(os.path.dirname(final), ".tmp_model")
    dtypes, shard = row_dtypes(cfg, emb.tables), emb.shard_tables()
    files, specs, failure = {}, {}, None
    if env.rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    for table in emb.tables:
        part = shard.get(table.name)
        mine = None if part is None else (part["keys" if table.dynamic else "rows"], part["weight"])
        gathered = emb.exchange.gather_objects(mine)
        if env.rank != 0 or failure is not None:
            continue
        try:
            rows, keys = _table_arrays(table, gathered)
            folder = f"tables/{table.name}"
            _write(tmp, f"{folder}/rows.npy", _npy(_rows_numpy(rows, dtypes[table.name])), files)
            if keys is not None:
                _write(tmp, f"{folder}/keys.npy", _npy(keys.numpy()), files)
            specs[table.name] = {
                "kind": "dynamic" if table.dynamic else "static",
                "num_embeddings": table.num_embeddings,
                "dim": table.dim,
                "rows": rows.shape[0],
                "dtype": dtypes[table.name],
                "out_of_range": table.out_of_range,
            }
        except Exception as e:  # noqa: BLE001 - keep joining the gathers; raised below on every rank
            failure = e
    if env.rank == 0 and failure is None:
        try:
            _publish(cfg, parts, tmp, final, files, specs)
        except Exception as e:  # noqa: BLE001
            failure = e
    said = emb.exchange.gather_objects(
        None if failure is None else f"{type(failure).__name__}: {failure}"
    )
    if failure is not None:
        raise failure
    if said[0] is not None:
        raise RuntimeError(f"inference model export to {final} failed on rank 0 ({said[0]})")
    return {"dir": final, "step": emb.num_updates, "dense": _dense_format(final, env)}


def _dense_format(final: str, env: DistContext) -> str | None:
    if env.rank != 0:
        return None
    with open(os.path.join(final, "meta.json")) as f:
        return json.load(f)["dense"]["format"]


def _publish(cfg: Config, parts, tmp: str, final: str, files: dict, specs: dict) -> None:
    emb = parts.embeddings
    data, dense = dense_program(
        unwrap(parts.model), cfg.data.num_dense, pooled_shape(emb.feature_dims, 3)
    )
    _write(tmp, dense["file"], data, files)
    meta = {
        "step": emb.num_updates,
        "model": cfg.model.name,
        "num_dense": cfg.data.num_dense,
        "features": _features(emb.tables),
        "tables": specs,
        "dense": dense,
        "config": to_dict(cfg),
    }
    _write(tmp, "meta.json", json.dumps(meta, indent=1).encode(), files)
    manifest = {"kind": KIND, "format": FORMAT, "step": emb.num_updates, "files": files}
    _write(tmp, "manifest.json", json.dumps(manifest, indent=1).encode(), {})
    InferenceModel(tmp)  # verifies every file and loads it: what is renamed into place is usable
    old = os.path.join(os.path.dirname(final), ".old_model")
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(final):
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    note = (
        ""
        if dense["format"] == "torch.export"
        else f" (torch.export failed: {dense['export_error']})"
    )
    print(f"inference model {final}: dense network as {dense['format']}{note}", flush=True)
