"""One piece of input (a Parquet row group, or a whole CSV file) read and turned into arrays, column by column.

Both passes of the converter run here, in the worker processes: ``count_unit`` (the vocabularies' value
counts and the standardize statistics) and ``map_unit`` (the dataset's arrays). Bad values raise
IngestError naming the file, row group, row (of the file, 0-based) and column. The per-column arithmetic
runs on ``xp`` (numpy, or cupy with --device cuda: pipeline/ingest/arrays.py); reading, the checks of bad
values and the per-distinct-value work stay in pyarrow on the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from pipeline.ingest import arrays
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


def dense_columns(unit: Unit, table: pa.Table, schema: Schema, xp=np):
    """[n, D] float64 (an xp array) after fill and before standardize; log1p applied (of max(x, 0))."""
    columns = []
    for d in schema.dense:
        values, nulls = _numbers(unit, table, d.column)
        _first(unit, ~np.isfinite(values), d.column, values, "is not a finite number")
        columns.append(
            arrays.fill_and_transform(
                xp, xp.asarray(values), xp.asarray(nulls), d.fill, d.transform
            )
        )
    if not columns:
        return xp.zeros((table.num_rows, 0), dtype=xp.float64)
    return xp.stack(columns, axis=1)


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


def _valid(xp, values: pa.Array):
    return xp.asarray(np.asarray(values.is_valid()))


def _hash(values: pa.Array, rows: int, xp=np):
    """1 + h(value) % (rows - 1), null -> 0: xxh64 of the UTF-8 text (per distinct value), splitmix64 of an int."""
    if pa.types.is_string(values.type):
        encoded = pc.dictionary_encode(values)
        data, offsets = arrays.string_buffers(encoded.dictionary)
        hashes = arrays.xxh64(xp, xp.asarray(data), xp.asarray(offsets))
        index = xp.asarray(encoded.indices.fill_null(0).to_numpy(zero_copy_only=False))
        h = hashes[index] if hashes.shape[0] else xp.zeros(len(values), dtype=xp.uint64)
    else:
        z = values.fill_null(0).to_numpy(zero_copy_only=False).astype(np.uint64)
        h = arrays.splitmix64(xp, xp.asarray(z))
    return arrays.hash_rows(xp, h, _valid(xp, values), rows)


def _vocab_ids(values: pa.Array, vocab, xp):
    """Vocabulary position + 1 of each value, 0 if not in it or missing: ints by sort and search on xp;
    strings through their distinct values (pyarrow's index_in), then a gather on xp."""
    if pa.types.is_string(values.type):
        encoded = pc.dictionary_encode(values)
        found = pc.index_in(encoded.dictionary, value_set=vocab).fill_null(-1)
        per_value = xp.asarray(found.to_numpy(zero_copy_only=False).astype(np.int64) + 1)
        index = xp.asarray(encoded.indices.fill_null(0).to_numpy(zero_copy_only=False))
        ids = per_value[index] if per_value.shape[0] else xp.zeros(len(values), dtype=xp.int64)
        return xp.where(_valid(xp, values), ids, 0)
    host = values.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    return arrays.vocab_lookup(xp, vocab, xp.asarray(host), _valid(xp, values))


def prepare_vocab(values: pa.ChunkedArray, c: Categorical, xp=np):
    """A vocabulary's values as encode() takes them: strings as an Arrow array, ints sorted on xp (once per
    worker, not per unit)."""
    if c.type == "string":
        return values
    return arrays.sort_vocab(xp, xp.asarray(values.to_numpy().astype(np.int64)))


def encode(unit: Unit, values: pa.Array, lengths: np.ndarray, c: Categorical, vocab, xp=np):
    """int64 ids of the values (an xp array): vocabulary position + 1 (0: rare, unseen or missing), a hash,
    or raw. vocab: prepare_vocab's."""
    if c.encode == "vocab":
        return _vocab_ids(values, vocab, xp)
    if c.encode == "hash":
        return _hash(values, c.rows, xp)
    ids = values.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    bad = (ids < 0) | ((ids >= c.rows) if c.rows else False)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        row = int(np.searchsorted(np.cumsum(lengths), i, side="right"))
        shown = values[i].as_py()
        bound = f" and < rows = {c.rows}" if c.rows else ""
        raise IngestError(f"{where(unit, row, c.column)}: raw id {shown!r} must be >= 0{bound}")
    return xp.asarray(ids)


def truncate(ids, lengths: np.ndarray, c: Categorical, xp=np):
    """Each row's ids cut to max_len, keeping the first or the last ones (xp arrays in and out)."""
    return arrays.truncate(xp, ids, xp.asarray(lengths), c.max_len, c.keep)
