"""One piece of input (a Parquet row group, or a whole CSV file) read and turned into arrays, column by column.

Both passes of the converter run here, in the worker processes: ``count_unit`` (the vocabularies' value
counts and the standardize statistics) and ``map_unit`` (the dataset's arrays). Bad values raise
IngestError naming the file, row group, row (of the file, 0-based) and column.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import xxhash

from pipeline.ingest.schema import Categorical, Schema


class IngestError(ValueError):
    """Bad input; the message names the file, row group, row and column."""


@dataclass(frozen=True)
class Unit:
    """A piece of work: row group ``group`` of ``path`` (CSV files are one group), its first row in the file."""

    path: str
    kind: str  # "parquet" or "csv"
    group: int
    first_row: int


def file_kind(path: str, schema: Schema) -> str:
    if schema.format != "auto":
        return schema.format
    return "csv" if path.lower().endswith((".csv", ".csv.gz", ".tsv")) else "parquet"


def units_of(path: str, schema: Schema) -> list[Unit]:
    kind = file_kind(path, schema)
    if kind == "csv":
        return [Unit(path, kind, 0, 0)]
    try:
        meta = pq.ParquetFile(path).metadata
    except (pa.ArrowInvalid, OSError) as e:
        raise IngestError(f"{path}: not a readable Parquet file ({e})") from None
    units, first = [], 0
    for g in range(meta.num_row_groups):
        units.append(Unit(path, kind, g, first))
        first += meta.row_group(g).num_rows
    return units


def where(unit: Unit, row: int, column: str) -> str:
    group = f", row group {unit.group}" if unit.kind == "parquet" else ""
    return f"{unit.path}{group}, row {unit.first_row + row}, column {column!r}"


def read_unit(unit: Unit, schema: Schema) -> pa.Table:
    """The schema's columns of one unit (CSV: strings for string and list columns, so ids keep their text)."""
    if unit.kind == "csv":
        types = {c.column: pa.string() for c in schema.categorical if c.type == "string" or c.list}
        try:
            table = pcsv.read_csv(
                unit.path,
                parse_options=pcsv.ParseOptions(delimiter=schema.csv_delimiter),
                convert_options=pcsv.ConvertOptions(column_types=types, strings_can_be_null=True),
            )
        except (pa.ArrowInvalid, OSError) as e:
            raise IngestError(
                f"{unit.path}: not readable as CSV ({str(e).splitlines()[0]})"
            ) from None
    else:
        try:
            table = pq.ParquetFile(unit.path).read_row_group(unit.group)
        except (pa.ArrowInvalid, OSError) as e:
            raise IngestError(f"{unit.path}, row group {unit.group}: unreadable ({e})") from None
    missing = [c for c in schema.columns if c not in table.column_names]
    if missing:
        raise IngestError(
            f"{unit.path}: column {missing[0]!r} (named in schema {schema.path}) is missing; "
            f"the file has columns {table.column_names}"
        )
    return table


def _numbers(unit: Unit, table: pa.Table, column: str) -> tuple[np.ndarray, np.ndarray]:
    """(float64 values, null mask) of a numeric column; an IngestError at its first non-number."""
    col = table.column(column)
    try:
        values = pc.cast(col, pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        for i, v in enumerate(col.to_pylist()):
            try:
                float(v if v is not None else 0)
            except (TypeError, ValueError):
                raise IngestError(f"{where(unit, i, column)}: {v!r} is not a number") from None
        raise IngestError(f"{where(unit, 0, column)}: type {col.type} is not numeric") from None
    nulls = np.asarray(values.is_null())
    return values.fill_null(0.0).to_numpy().copy(), nulls


def _first(unit: Unit, mask: np.ndarray, column: str, values, problem: str) -> None:
    if mask.any():
        i = int(np.flatnonzero(mask)[0])
        value = values[i].item() if isinstance(values[i], np.generic) else values[i]
        raise IngestError(f"{where(unit, i, column)}: {value!r} {problem}")


def label_and_weight(unit: Unit, table: pa.Table, schema: Schema):
    label, nulls = _numbers(unit, table, schema.label)
    _first(unit, nulls, schema.label, [None] * len(label), "is missing; every row needs a label")
    _first(unit, ~((label >= 0) & (label <= 1)), schema.label, label, "is not a label in [0, 1]")
    weight = None
    if schema.weight:
        weight, nulls = _numbers(unit, table, schema.weight)
        _first(unit, nulls, schema.weight, [None] * len(weight), "is missing (a weight per row)")
        bad = ~(np.isfinite(weight) & (weight >= 0))
        _first(unit, bad, schema.weight, weight, "is not a finite weight >= 0")
        weight = weight.astype(np.float32)
    return label.astype(np.float32), weight


def dense_columns(unit: Unit, table: pa.Table, schema: Schema) -> np.ndarray:
    """[n, D] float64 after fill and before standardize; log1p applied (of max(x, 0))."""
    out = np.zeros((table.num_rows, len(schema.dense)), np.float64)
    for j, d in enumerate(schema.dense):
        values, nulls = _numbers(unit, table, d.column)
        _first(unit, ~np.isfinite(values), d.column, values, "is not a finite number")
        values[nulls] = d.fill
        if d.transform == "log1p":
            values = np.log1p(np.maximum(values, 0.0))
        out[:, j] = values
    return out


# ---- categorical columns -------------------------------------------------------------------------


def _elements(unit: Unit, table: pa.Table, c: Categorical) -> tuple[pa.Array, np.ndarray]:
    """(the values, flattened for a list column; per-row lengths) of a categorical column."""
    col = table.column(c.column).combine_chunks()
    if not c.list:
        return col, np.ones(len(col), np.int64)
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        if not c.separator:
            raise IngestError(
                f"{where(unit, 0, c.column)}: a list column is text here: give the schema's separator"
            )
        col = pc.split_pattern(pc.if_else(pc.equal(col, ""), None, col), c.separator)
    if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)):
        raise IngestError(f"{where(unit, 0, c.column)}: type {col.type} is not a list")
    lengths = pc.list_value_length(col).fill_null(0).to_numpy(zero_copy_only=False)
    flat = pc.list_flatten(col)
    if pa.types.is_string(flat.type):
        flat = pc.if_else(pc.equal(flat, ""), None, flat)
    return flat, lengths.astype(np.int64)


def _typed(unit: Unit, values: pa.Array, lengths: np.ndarray, c: Categorical) -> pa.Array:
    """The values as int64 (type "int") or string; an IngestError at the first value that is neither."""
    target = pa.int64() if c.type == "int" else pa.string()
    if values.type == target:
        return values
    if c.type == "string" and pa.types.is_floating(values.type):
        raise IngestError(f"{where(unit, 0, c.column)}: type {values.type} is not a string or int")
    try:
        return pc.cast(values, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        starts = np.concatenate([[0], np.cumsum(lengths)])
        for i, v in enumerate(values.to_pylist()):
            try:
                pa.array([v]).cast(target)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                row = int(np.searchsorted(starts, i, side="right")) - 1
                raise IngestError(f"{where(unit, row, c.column)}: {v!r} is not {c.type}") from None
        raise


def categorical_values(unit: Unit, table: pa.Table, c: Categorical) -> tuple[pa.Array, np.ndarray]:
    values, lengths = _elements(unit, table, c)
    return _typed(unit, values, lengths, c), lengths


def value_counts(values: pa.Array) -> pa.Table:
    """(value, count) of the non-null values."""
    counts = pc.value_counts(values.drop_null())
    return pa.table({"value": counts.field("values"), "count": counts.field("counts")})


def _hash(values: pa.Array, rows: int) -> np.ndarray:
    """1 + h(value) % (rows - 1), null -> 0: xxh64 of the UTF-8 text, splitmix64 of an int."""
    if pa.types.is_string(values.type):
        encoded = pc.dictionary_encode(values)
        hashes = np.array(
            [xxhash.xxh64_intdigest(s.encode()) for s in encoded.dictionary.to_pylist()], np.uint64
        )
        index = encoded.indices.fill_null(0).to_numpy(zero_copy_only=False)
        h = hashes[index] if len(hashes) else np.zeros(len(values), np.uint64)
    else:
        z = values.fill_null(0).to_numpy(zero_copy_only=False).astype(np.uint64)
        with np.errstate(over="ignore"):
            z = z + np.uint64(0x9E3779B97F4A7C15)
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            h = z ^ (z >> np.uint64(31))
    ids = (h % np.uint64(rows - 1)).astype(np.int64) + 1
    ids[np.asarray(values.is_null())] = 0
    return ids


def encode(unit: Unit, values: pa.Array, lengths: np.ndarray, c: Categorical, vocab) -> np.ndarray:
    """int64 ids of the values: vocabulary position + 1 (0: rare, unseen or missing), a hash, or raw."""
    if c.encode == "vocab":
        index = pc.index_in(values, value_set=vocab)
        return index.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64) + 1
    if c.encode == "hash":
        return _hash(values, c.rows)
    ids = values.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    bad = (ids < 0) | ((ids >= c.rows) if c.rows else False)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        row = int(np.searchsorted(np.cumsum(lengths), i, side="right"))
        shown = values[i].as_py()
        bound = f" and < rows = {c.rows}" if c.rows else ""
        raise IngestError(f"{where(unit, row, c.column)}: raw id {shown!r} must be >= 0{bound}")
    return ids


def truncate(ids: np.ndarray, lengths: np.ndarray, c: Categorical) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ids cut to max_len, keeping the first or the last ones."""
    if not c.max_len or not len(lengths) or lengths.max() <= c.max_len:
        return ids, lengths
    starts = np.cumsum(lengths) - lengths
    kept = np.minimum(lengths, c.max_len)
    if c.keep == "last":
        starts = starts + lengths - kept
    out_starts = np.cumsum(kept) - kept
    take = np.repeat(starts - out_starts, kept) + np.arange(int(kept.sum()))
    return ids[take], kept
