"""Parquet or CSV files with a schema -> a binary dataset with jagged (multi-hot) features.

Two passes over the input, each parallel over units of work (a Parquet row group, a CSV file): the count
pass (only when a vocabulary or a standardize statistic is to be built) and the map pass. Results come back
in input order whatever the number of workers, and the counts are merged into an order-free total, so the
output is byte-identical for any ``--workers``. Everything is written to ``.OUT.partial`` and renamed to
OUT when complete.
"""

from __future__ import annotations

import glob
import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.ingest import columns as col
from pipeline.ingest.arrays import DeviceError, array_module, to_host
from pipeline.ingest.columns import IngestError, Unit
from pipeline.ingest.output import DatasetWriter
from pipeline.ingest.schema import Schema
from pipeline.ingest.vocab import build_vocab, dense_stats, load_vocab, merge_counts, save_vocab

_MERGE_EVERY = (
    16  # units of counts collected before they are merged (bounds the main process's memory)
)


@dataclass
class IngestOptions:
    vocab: str = ""  # a dataset (or its vocab/) whose vocabularies and statistics map these files
    workers: int = 1
    device: str = "cpu"  # the per-column work's arrays: "cpu" (numpy) or "cuda" (cupy)
    overwrite: bool = False


def expand_inputs(inputs: list[str]) -> list[str]:
    """Files, globs and directories (their .parquet/.csv files, sorted) -> the files, in order."""
    files = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(
                str(p) for p in Path(item).iterdir() if p.suffix.lower() in (".parquet", ".csv")
            )
        elif glob.has_magic(item):
            found = sorted(glob.glob(item))
        else:
            found = [item] if os.path.isfile(item) else []
        if not found:
            raise IngestError(f"input {item!r}: no such file (or no .parquet/.csv files in it)")
        files += found
    return files


# ---- worker side -----------------------------------------------------------------------------------
_STATE: dict = {}


def _init(schema: Schema, vocabs: dict, stats: dict, device: str = "cpu") -> None:
    xp = array_module(device)
    prepared = {
        c.name: col.prepare_vocab(vocabs[c.name].column("value"), c, xp)
        for c in schema.categorical
        if c.name in vocabs
    }
    _STATE.update(schema=schema, vocabs=prepared, stats=stats, xp=xp)


def _count(unit: Unit):
    schema: Schema = _STATE["schema"]
    table = col.read_unit(unit, schema)
    col.label_and_weight(unit, table, schema)
    # the statistics' sums on the host: the same order of additions, so the same bits, on any device
    dense = to_host(col.dense_columns(unit, table, schema, _STATE["xp"]))
    counts = {}
    for c in schema.categorical:
        values, _ = col.categorical_values(unit, table, c)
        if c.encode == "vocab":
            counts[c.name] = col.value_counts(values)
    return table.num_rows, counts, dense.sum(axis=0), (dense * dense).sum(axis=0)


def _map(unit: Unit):
    schema: Schema = _STATE["schema"]
    table = col.read_unit(unit, schema)
    labels, weights = col.label_and_weight(unit, table, schema)
    xp = _STATE["xp"]
    dense = col.dense_columns(unit, table, schema, xp)
    for j, d in enumerate(schema.dense):
        if d.transform == "standardize":
            mean, std = _STATE["stats"][d.column]
            dense[:, j] = (dense[:, j] - mean) / std
    one_hot, jagged = [], {}
    for c in schema.categorical:
        values, lengths = col.categorical_values(unit, table, c)
        ids = col.encode(unit, values, lengths, c, _STATE["vocabs"].get(c.name), xp)
        if c.list:
            ids, kept = col.truncate(ids, lengths, c, xp)
            jagged[c.name] = (to_host(ids), to_host(kept))
        else:
            one_hot.append(to_host(ids))
    sparse = np.stack(one_hot, axis=1) if one_hot else np.zeros((len(labels), 0), np.int64)
    return labels, weights, to_host(dense.astype(xp.float32)), sparse, jagged


def _run(fn, units: list[Unit], workers: int, state: tuple) -> Iterator:
    """fn over the units, results in input order (in this process when workers == 1)."""
    if workers <= 1 or len(units) <= 1:
        _init(*state)
        yield from map(fn, units)
        return
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=get_context("spawn"), initializer=_init, initargs=state
    ) as pool:
        yield from pool.map(fn, units)


# ---- main side -------------------------------------------------------------------------------------


def _count_pass(schema: Schema, units: list[Unit], workers: int, device: str = "cpu"):
    """(vocabularies, standardize statistics) of the train files."""
    pending: dict[str, list[pa.Table]] = {}
    sums = np.zeros(len(schema.dense))
    squares = np.zeros(len(schema.dense))
    rows = 0
    for n, counts, s, q in _run(_count, units, workers, (schema, {}, {}, device)):
        rows += n
        sums, squares = sums + s, squares + q
        for name, table in counts.items():
            pending.setdefault(name, []).append(table)
            if len(pending[name]) >= _MERGE_EVERY:
                pending[name] = [merge_counts(pending[name])]
    if not rows:
        return {}, {}, 0
    vocabs = {}
    for c in schema.categorical:
        if c.encode == "vocab":
            vocabs[c.name] = build_vocab(merge_counts(pending[c.name]), c.min_freq)
    stats = dict(
        zip([d.column for d in schema.dense], dense_stats(sums, squares, rows), strict=True)
    )
    stats = {d.column: stats[d.column] for d in schema.dense if d.transform == "standardize"}
    return vocabs, stats, rows


def _no_rows(files: list[str]) -> IngestError:
    shown = ", ".join(files[:3]) + (" ..." if len(files) > 3 else "")
    return IngestError(
        f"no rows in the input: {shown} has no data rows; a dataset needs at least one row"
    )


def ingest(
    schema: Schema, inputs: list[str], out: str | os.PathLike, options: IngestOptions | None = None
) -> dict:
    """Convert the input files into a dataset at ``out``; returns its meta.json content."""
    options = options or IngestOptions()
    started = time.time()
    out = Path(out)
    if out.exists() and not options.overwrite:
        raise IngestError(f"output {out} exists (give --overwrite to replace it)")
    try:
        array_module(options.device)  # a missing cupy is named before any work
    except DeviceError as e:
        raise IngestError(str(e)) from None
    files = expand_inputs(inputs)
    units = [u for f in files for u in col.units_of(f, schema)]
    if options.vocab:
        vocabs, rows, stats = load_vocab(options.vocab, schema)
    else:
        needs_count = any(c.encode == "vocab" for c in schema.categorical) or any(
            d.transform == "standardize" for d in schema.dense
        )
        vocabs, stats, counted = (
            _count_pass(schema, units, options.workers, options.device)
            if needs_count
            else ({}, {}, 1)
        )
        if not counted:
            raise _no_rows(files)
        rows = {c.name: _table_rows(c, vocabs) for c in schema.categorical}
    partial = out.parent / f".{out.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        writer = DatasetWriter(partial, schema, rows)
        for result in _run(_map, units, options.workers, (schema, vocabs, stats, options.device)):
            writer.append(*result)
        if not writer.num_rows:
            raise _no_rows(files)
        if not options.vocab:
            save_vocab(partial / "vocab", schema, vocabs, writer.table_rows(), stats)
        source = {"files": files, "vocab": options.vocab or None}
        meta = writer.finish(
            source, {"seconds": round(time.time() - started, 3), "workers": options.workers}
        )
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(out, ignore_errors=True)
    os.replace(partial, out)
    return meta


def _table_rows(c, vocabs: dict) -> int:
    """Rows of a feature's table: vocabulary + the reserved row 0, the hash's rows, or (raw) rows or 0 (unknown
    until the ids are read)."""
    if c.encode == "vocab":
        return vocabs[c.name].num_rows + 1
    return c.rows
