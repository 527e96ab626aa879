"""Writes the converter's arrays, in input order, as a dataset with jagged features (docs/data.md, "The
dataset format"); pipeline.dataset.BinaryDataset reads it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from pipeline.dataset_format import FORMAT_NAME
from pipeline.ingest.schema import Schema

_INT32_MAX = 2**31 - 1
_COPY_ROWS = 1 << 22


def _entry(path: Path, dtype: np.dtype, shape: list[int]) -> dict:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            sha.update(block)
    return {
        "name": path.name,
        "dtype": np.dtype(dtype).name,
        "bytes": path.stat().st_size,
        "shape": shape,
        "sha256": sha.hexdigest(),
    }


def _narrow(path: Path, count: int) -> None:
    """Rewrite an int64 file of count values as int32 (all of them fit)."""
    wide = np.memmap(path, np.int64, "r", shape=(count,)) if count else np.zeros(0, np.int64)
    narrow = path.with_suffix(".tmp")
    with open(narrow, "wb") as f:
        for lo in range(0, count, _COPY_ROWS):
            f.write(wide[lo : lo + _COPY_ROWS].astype(np.int32).tobytes())
    del wide
    narrow.replace(path)


class DatasetWriter:
    """Appends each unit's arrays; ``finish`` narrows ids and offsets to int32 where they fit and writes meta.json."""

    def __init__(self, directory: Path, schema: Schema, rows: dict[str, int]):
        self.dir, self.schema = directory, schema
        self.rows = dict(rows)  # 0: a raw feature without a bound, sized from its largest id
        self.max_id = {c.name: -1 for c in schema.categorical}
        self.one_hot = [c.name for c in schema.categorical if not c.list]
        self.jagged = [c.name for c in schema.categorical if c.list]
        self.num_rows = 0
        self.values_total = dict.fromkeys(self.jagged, 0)
        names = ["dense", "labels", "sparse"] + (["weights"] if schema.weight else [])
        self.files = {n: open(directory / f"{n}.bin", "wb") for n in names}
        for name in self.jagged:
            self.files[f"{name}.values"] = open(directory / f"{name}.values.bin", "wb")
            self.files[f"{name}.offsets"] = open(directory / f"{name}.offsets.bin", "wb")
            self.files[f"{name}.offsets"].write(np.zeros(1, np.int64).tobytes())

    def append(self, labels, weights, dense, sparse, jagged) -> None:
        self.files["labels"].write(labels.tobytes())
        self.files["dense"].write(np.ascontiguousarray(dense).tobytes())
        self.files["sparse"].write(np.ascontiguousarray(sparse, np.int64).tobytes())
        if weights is not None:
            self.files["weights"].write(weights.tobytes())
        for j, name in enumerate(self.one_hot):
            if len(sparse):
                self.max_id[name] = max(self.max_id[name], int(sparse[:, j].max()))
        for name in self.jagged:
            ids, lengths = jagged[name]
            offsets = self.values_total[name] + np.cumsum(lengths, dtype=np.int64)
            self.files[f"{name}.values"].write(ids.astype(np.int64).tobytes())
            self.files[f"{name}.offsets"].write(offsets.tobytes())
            self.values_total[name] += len(ids)
            if len(ids):
                self.max_id[name] = max(self.max_id[name], int(ids.max()))
        self.num_rows += len(labels)

    def table_rows(self) -> dict[str, int]:
        return {n: r or self.max_id[n] + 1 or 1 for n, r in self.rows.items()}

    def finish(self, source: dict, options: dict) -> dict:
        for f in self.files.values():
            f.close()
        rows, count = self.table_rows(), self.num_rows
        ids32 = {n: rows[n] <= _INT32_MAX and self.max_id[n] <= _INT32_MAX for n in rows}
        sparse_dtype = np.int32 if all(ids32[n] for n in self.one_hot) else np.int64
        if sparse_dtype == np.int32:
            _narrow(self.dir / "sparse.bin", count * len(self.one_hot))
        files = {
            "dense": _entry(self.dir / "dense.bin", np.float32, [count, len(self.schema.dense)]),
            "labels": _entry(self.dir / "labels.bin", np.float32, [count]),
            "sparse": _entry(self.dir / "sparse.bin", sparse_dtype, [count, len(self.one_hot)]),
        }
        if self.schema.weight:
            files["weights"] = _entry(self.dir / "weights.bin", np.float32, [count])
        jagged = {}
        for name in self.jagged:
            total = self.values_total[name]
            values, offsets = self.dir / f"{name}.values.bin", self.dir / f"{name}.offsets.bin"
            value_dtype = np.int32 if ids32[name] else np.int64
            offset_dtype = np.int32 if total <= _INT32_MAX else np.int64
            if value_dtype == np.int32:
                _narrow(values, total)
            if offset_dtype == np.int32:
                _narrow(offsets, count + 1)
            spec = next(c for c in self.schema.categorical if c.name == name)
            jagged[name] = {
                "values": _entry(values, value_dtype, [total]),
                "offsets": _entry(offsets, offset_dtype, [count + 1]),
                "max_len": spec.max_len,
                "keep": spec.keep,
            }
        names = [c.name for c in self.schema.categorical]
        meta = {
            "format": FORMAT_NAME,
            "version": 2,
            "num_rows": count,
            "num_dense": len(self.schema.dense),
            "dense_names": [d.column for d in self.schema.dense],
            "feature_names": names,
            "table_rows": [rows[n] for n in names],
            "days": None,
            "files": files,
            "one_hot_features": self.one_hot,
            "pooling": {c.name: c.pooling for c in self.schema.categorical},
            "jagged": jagged,
            "label": self.schema.label,
            "weight": self.schema.weight or None,
            "vocabulary": None if source["vocab"] else "vocab/vocab.json",
            "source": source,
            "options": options,
            "schema": Path(self.schema.path).read_text(),
        }
        (self.dir / "meta.json").write_text(json.dumps(meta, indent=1, allow_nan=False))
        return meta
