"""The binary dataset format on disk: meta.json's fields and their checks, and a writer of arrays in it.

    <dir>/dense.bin    float32 [R, num_dense]
    <dir>/sparse.bin   int32 or int64 [R, F1] ids of the one-hot features, feature f in [0, table_rows[f])
    <dir>/labels.bin   float32 or uint8 [R]
    <dir>/weights.bin  float32 [R] per-sample loss weights (optional: files.weights; finite, >= 0)
    <dir>/meta.json    format, num_rows, num_dense, feature_names, table_rows, days, files (name, dtype,
                       bytes, shape, sha256 of each), options
    version 2 adds jagged (multi-hot) features, one bag of ids per row:
    <dir>/<f>.values.bin   int32 or int64 [N_f] the bags' ids, row after row
    <dir>/<f>.offsets.bin  int32 or int64 [R + 1] row r's bag is values[offsets[r]:offsets[r + 1]]
    meta.json              jagged {f: {values, offsets (file entries), max_len, keep}}, one_hot_features
                           (the columns of sparse.bin: feature_names without the jagged ones, in order)

``python -m pipeline.criteo preprocess`` writes it from Criteo TSV files, ``python -m pipeline.ingest`` from
Parquet or CSV with a schema, ``write_dataset`` from arrays;
pipeline.dataset.BinaryDataset reads it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

FORMAT_NAME = "recfuse-criteo-binary"


class DatasetError(ValueError):
    """A dataset directory that is missing, incomplete or inconsistent with its meta.json."""


def check_file(directory: Path, entry: dict, dtype: np.dtype, shape: tuple[int, ...]) -> Path:
    path = directory / entry["name"]
    expected = int(np.prod(shape)) * dtype.itemsize
    if entry.get("bytes") != expected:
        raise DatasetError(
            f"{directory / 'meta.json'}: {entry['name']} is listed with {entry.get('bytes')} bytes, "
            f"but shape {list(shape)} of {dtype.name} needs {expected}"
        )
    if not path.is_file():
        raise DatasetError(f"{path} is missing (meta.json lists it with {expected} bytes)")
    actual = path.stat().st_size
    if actual != expected:
        where = ""
        if actual < expected:  # so shape[0] > 0
            row_bytes = expected // shape[0]
            first = actual // row_bytes
            where = f"; row {first} (byte offset {first * row_bytes}) is the first incomplete one"
        raise DatasetError(
            f"{path} has {actual} bytes, expected {expected} from meta.json "
            f"(truncated or overwritten?){where}"
        )
    return path


def read_meta(meta_path: Path) -> dict:
    """meta.json, with every field BinaryDataset relies on present and consistent (else DatasetError naming it)."""
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise DatasetError(f"{meta_path}: not valid JSON ({e})") from None
    except UnicodeDecodeError as e:
        raise DatasetError(f"{meta_path}: not UTF-8 text (byte offset {e.start})") from None
    if not isinstance(meta, dict):
        raise DatasetError(f"{meta_path}: expected a JSON object, got {type(meta).__name__}")
    if meta.get("format") != FORMAT_NAME:
        raise DatasetError(
            f"{meta_path}: format is {meta.get('format')!r}, expected {FORMAT_NAME!r}"
        )
    kinds = {
        "num_rows": int,
        "num_dense": int,
        "feature_names": list,
        "table_rows": list,
        "files": dict,
    }
    for key, kind in kinds.items():
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            raise DatasetError(
                f"{meta_path}: {key!r} is {meta.get(key, 'missing')!r}, expected a JSON {kind.__name__}"
            )
    if meta["num_rows"] < 0 or meta["num_dense"] < 0:
        raise DatasetError(
            f"{meta_path}: num_rows {meta['num_rows']} and num_dense {meta['num_dense']} must be >= 0"
        )
    if len(meta["table_rows"]) != len(meta["feature_names"]) or not all(
        isinstance(n, int) and n > 0 for n in meta["table_rows"]
    ):
        raise DatasetError(
            f"{meta_path}: table_rows {meta['table_rows']} must be one positive row count per feature "
            f"of feature_names ({len(meta['feature_names'])})"
        )
    for key in ("dense", "sparse", "labels"):
        _check_entry(meta_path, f"files.{key}", meta["files"].get(key))
    if "weights" in meta["files"]:
        _check_entry(meta_path, "files.weights", meta["files"]["weights"])
    _check_jagged(meta_path, meta)
    return meta


def _check_entry(meta_path: Path, key: str, entry) -> None:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise DatasetError(
            f"{meta_path}: {key} is {entry!r}, expected an object with 'name', 'dtype', 'bytes'"
        )
    try:
        np.dtype(entry.get("dtype", "float32"))
    except TypeError:
        raise DatasetError(
            f"{meta_path}: {key}.dtype {entry.get('dtype')!r} is not a numpy dtype"
        ) from None


def _check_jagged(meta_path: Path, meta: dict) -> None:
    """Version 2: "jagged" {feature: {values, offsets}} and "one_hot_features" (the columns of sparse.bin),
    together every feature of feature_names once, in its order; without them every feature is one-hot."""
    jagged = meta.setdefault("jagged", {})
    names = meta["feature_names"]
    one_hot = meta.setdefault("one_hot_features", [n for n in names if n not in jagged])
    if not isinstance(jagged, dict) or not isinstance(one_hot, list):
        raise DatasetError(f"{meta_path}: 'jagged' must be an object and 'one_hot_features' a list")
    if one_hot != [n for n in names if n not in jagged] or not set(jagged) <= set(names):
        raise DatasetError(
            f"{meta_path}: one_hot_features {one_hot} and the jagged features {sorted(jagged)} must split "
            f"feature_names {names}, in its order"
        )
    for name, spec in jagged.items():
        if not isinstance(spec, dict):
            raise DatasetError(f"{meta_path}: jagged.{name} is {spec!r}, expected an object")
        for part in ("values", "offsets"):
            _check_entry(meta_path, f"jagged.{name}.{part}", spec.get(part))


def _check_arrays(dense, sparse, labels, feature_names: list[str], table_rows: list[int]) -> None:
    rows = dense.shape[0]
    if (
        sparse.shape != (rows, len(feature_names))
        or labels.shape != (rows,)
        or len(table_rows) != len(feature_names)
    ):
        raise ValueError(
            f"inconsistent shapes: dense {dense.shape}, sparse {sparse.shape}, labels {labels.shape}, "
            f"{len(feature_names)} features, {len(table_rows)} table sizes"
        )
    if rows and (sparse.min() < 0 or bool((sparse.max(axis=0) >= np.asarray(table_rows)).any())):
        raise ValueError(
            f"sparse ids outside [0, table_rows) (max per feature {sparse.max(axis=0).tolist()})"
        )


def write_dataset(
    directory: str | os.PathLike,
    dense: np.ndarray,
    sparse: np.ndarray,
    labels: np.ndarray,
    feature_names: list[str],
    table_rows: list[int],
    days: list[int] | None = None,
    weights: np.ndarray | None = None,
) -> dict:
    """Write arrays as a dataset BinaryDataset reads (generated data, tests, benchmarks); returns meta.json's content.

    dense float32 [R, Dd], sparse int32/int64 [R, F] ids in [0, table_rows[f]), labels float32/uint8 [R],
    weights (optional) float32 [R] finite and >= 0. Written
    under ``.NAME.partial`` beside the directory and renamed when complete, like the Criteo preprocessing."""
    directory = Path(directory)
    rows = dense.shape[0]
    _check_arrays(dense, sparse, labels, feature_names, table_rows)
    arrays = [
        ("dense", dense.astype(np.float32, copy=False)),
        ("sparse", sparse),
        ("labels", labels),
    ]
    if weights is not None:
        weights = np.asarray(weights, np.float32)
        if weights.shape != (rows,) or not bool(np.all(np.isfinite(weights) & (weights >= 0))):
            raise ValueError(
                f"weights must be {rows} finite values >= 0, got shape {weights.shape}"
            )
        arrays.append(("weights", weights))
    partial = directory.parent / f".{directory.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    files = {}
    for key, array in arrays:
        data = np.ascontiguousarray(array).tobytes()
        (partial / f"{key}.bin").write_bytes(data)
        files[key] = {
            "name": f"{key}.bin",
            "dtype": array.dtype.name,
            "bytes": len(data),
            "shape": list(array.shape),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    meta = {
        "format": FORMAT_NAME,
        "version": 1,
        "num_rows": rows,
        "num_dense": dense.shape[1],
        "feature_names": list(feature_names),
        "table_rows": [int(n) for n in table_rows],
        "days": days,
        "files": files,
        "options": {"ids": "written by pipeline.dataset_format.write_dataset"},
    }
    (partial / "meta.json").write_text(json.dumps(meta, indent=1, allow_nan=False))
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(partial, directory)
    return meta
