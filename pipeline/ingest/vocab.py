"""Vocabularies and dense statistics: built from the count pass, saved beside a dataset (``DIR/vocab/``),
loaded again by ``--vocab DIR`` for later files.

    vocab/<feature>.parquet   columns value (string or int64) and count; the value in row i has id i + 1
    vocab/vocab.json          per feature: encode, type, rows (table rows), file, bytes, sha256;
                              per standardized dense column: mean, std
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.ingest.columns import IngestError
from pipeline.ingest.schema import Schema

VOCAB_FORMAT = "recfuse-ingest-vocab"


def merge_counts(tables: list[pa.Table]) -> pa.Table:
    """(value, count) tables summed per value (any order in, one row per value out)."""
    merged = pa.concat_tables(tables).group_by("value").aggregate([("count", "sum")])
    return merged.rename_columns(["value", "count"])


def build_vocab(counts: pa.Table, min_freq: int) -> pa.Table:
    """Values seen >= min_freq times, by decreasing count, ties by increasing value (so no worker count
    or file order changes it)."""
    kept = counts.filter(pc.greater_equal(counts.column("count"), min_freq))
    order = pc.sort_indices(kept, sort_keys=[("count", "descending"), ("value", "ascending")])
    return kept.take(order).select(["value", "count"])


def dense_stats(sums: np.ndarray, squares: np.ndarray, rows: int) -> list[tuple[float, float]]:
    """(mean, std) per column; a constant column gets std 1 (its values all become 0)."""
    out = []
    for s, q in zip(sums.tolist(), squares.tolist(), strict=True):
        mean = s / rows
        std = math.sqrt(max(q / rows - mean * mean, 0.0))
        out.append((mean, std if std > 0 else 1.0))
    return out


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_vocab(directory: Path, schema: Schema, vocabs: dict, rows: dict, stats: dict) -> dict:
    """Write vocab/ (the vocabularies as Parquet, vocab.json); returns vocab.json's content."""
    directory.mkdir(parents=True, exist_ok=True)
    features = {}
    for c in schema.categorical:
        entry = {"encode": c.encode, "type": c.type, "rows": rows[c.name], "file": None}
        if c.name in vocabs:
            path = directory / f"{c.name}.parquet"
            pq.write_table(vocabs[c.name], path, compression="zstd")
            entry.update(file=path.name, bytes=path.stat().st_size, sha256=_sha(path))
        features[c.name] = entry
    dense = {name: {"mean": m, "std": s} for name, (m, s) in stats.items()}
    content = {"format": VOCAB_FORMAT, "version": 1, "features": features, "dense": dense}
    (directory / "vocab.json").write_text(json.dumps(content, indent=1, allow_nan=False))
    return content


def load_vocab(path: str | Path, schema: Schema) -> tuple[dict, dict, dict]:
    """(vocabularies, table rows, dense stats) saved in a dataset made with this schema (or its vocab/);
    an IngestError naming the file for a missing, altered or mismatching vocabulary."""
    path = Path(path)
    directory = path / "vocab" if (path / "vocab" / "vocab.json").is_file() else path
    meta_path = directory / "vocab.json"
    if not meta_path.is_file():
        raise IngestError(f"--vocab {path}: no vocab.json there or in {path / 'vocab'}")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IngestError(f"{meta_path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != VOCAB_FORMAT:
        raise IngestError(f"{meta_path}: not a vocabulary of pipeline.ingest")
    vocabs, rows, stats = {}, {}, {}
    for c in schema.categorical:
        entry = meta["features"].get(c.name)
        if entry is None or entry["encode"] != c.encode or entry["type"] != c.type:
            raise IngestError(
                f"{meta_path}: feature {c.name!r} is {entry and (entry['encode'], entry['type'])}, "
                f"the schema's is {(c.encode, c.type)}: make the vocabulary with this schema"
            )
        rows[c.name] = int(entry["rows"])
        if entry["file"]:
            file = directory / entry["file"]
            if (
                not file.is_file()
                or file.stat().st_size != entry["bytes"]
                or _sha(file) != entry["sha256"]
            ):
                raise IngestError(
                    f"{file}: missing or altered (size and sha256 differ from {meta_path})"
                )
            vocabs[c.name] = pq.read_table(file)
    for d in schema.dense:
        if d.transform == "standardize":
            if d.column not in meta["dense"]:
                raise IngestError(f"{meta_path}: no statistics of dense column {d.column!r}")
            stats[d.column] = (meta["dense"][d.column]["mean"], meta["dense"][d.column]["std"])
    return vocabs, rows, stats
