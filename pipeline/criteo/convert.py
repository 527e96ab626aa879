"""Criteo Kaggle / 1TB TSV -> RecFuse binary dataset.

    python -m pipeline.criteo preprocess day_0.gz day_1.gz ... --out DIR (--hash-rows N | --min-freq T | --vocab D)

Output (all little-endian, row-major, no headers, R = rows kept):
    dense.bin   float32 [R, 13]  log(1 + max(x, 0)); an empty I field is 0 (so it stays 0)
    sparse.bin  int32/int64 [R, 26]  per-table row ids
    labels.bin  float32 or uint8 [R]
    meta.json   row count, table sizes, dtypes, options, sources, size + sha256 of every file
    vocab/      with --min-freq or --vocab: the vocabulary, C1.npy .. C26.npy + vocab.json
                (pipeline/criteo/vocab.py; C<t>.npy[i] is the raw hex value given id i + 1)

Categorical ids, per table:
    --hash-rows N   id = int(hex, 16) % N. An empty field counts as hex 00000000, i.e. row 0
                    (shared with the values that hash to 0, as in the DLRM/TorchRec scripts).
    --min-freq T    two passes: count every value, then keep those seen >= T times. Kept values
                    get ids 1..V in order of decreasing count (ties: smaller hex value first), so
                    hot rows sit together; rarer values and empty fields share row 0.
                    The vocabulary is saved in DIR/vocab.
    --vocab D       one pass through the vocabulary saved in D (a dataset directory or its vocab/),
                    e.g. for the test day of a dataset built with --min-freq: the same raw values get
                    the same ids, values not in it and empty fields get row 0; the table sizes are D's.

Everything is written under DIR's sibling ``.DIR.partial`` and renamed to DIR only after
meta.json (written last) is complete, so an interrupted run never leaves a dataset that
BinaryDataset would accept.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.criteo.parse import (
    DENSE_NAMES,
    NUM_DENSE,
    NUM_SPARSE,
    SPARSE_NAMES,
    dense_transform,
    describe_bad_line,
    parse_chunk,
)
from pipeline.criteo.vocab import VOCAB_DIR, ValueCounter, load_vocabulary, map_to_vocabulary, save_vocabulary, table_keys

FORMAT_NAME = "recfuse-criteo-binary"
FORMAT_VERSION = 1
_MAX_BAD_EXAMPLES = 20


class CriteoFormatError(ValueError):
    """A malformed input line; the message names file, line number and byte offset."""


@dataclass
class PreprocessOptions:
    hash_rows: list[int] | None = None  # one per table (a single value is repeated)
    min_freq: int | None = None
    vocab: str | None = None  # map through the vocabulary saved in this dataset (or its vocab/ directory)
    skip_bad_lines: bool = False
    chunk_rows: int = 262_144  # lines parsed at once; memory is about 1 KiB per line
    id_dtype: str = "int32"
    label_dtype: str = "float32"
    days: int = 0  # > 0: record the rows as that many equal "days" (for the MLPerf-style eval split)
    files_are_days: bool = False  # record one "day" per input file (Criteo 1TB day_0 .. day_23)
    overwrite: bool = False
    progress: bool = True


@dataclass
class _Chunk:
    data: bytes
    lines: list[bytes]
    first_line: int  # 1-based line number of lines[0]
    byte_offset: int  # offset of lines[0] in the (decompressed) file


@dataclass
class _SourceStats:
    path: str
    bytes: int
    lines: int = 0
    rows: int = 0
    bad_lines: int = 0


@dataclass
class _BadLines:
    count: int = 0
    examples: list[str] = field(default_factory=list)


def _open_text_bytes(path: Path) -> tuple[io.BufferedReader, object]:
    """(line reader, raw file) for a plain or gzip file; gzip is recognised by its magic bytes, not its name."""
    raw = open(path, "rb")
    magic = raw.read(2)
    raw.seek(0)
    if magic == b"\x1f\x8b":
        return io.BufferedReader(gzip.GzipFile(fileobj=raw), buffer_size=1 << 20), raw
    return io.BufferedReader(raw, buffer_size=1 << 20), raw


def _iter_chunks(path: Path, chunk_rows: int, bar: tqdm | None) -> Iterator[_Chunk]:
    reader, raw = _open_text_bytes(path)
    line_no, offset, progress_pos = 1, 0, 0
    with reader, raw:
        while True:
            lines = list(itertools.islice(reader, chunk_rows))
            if not lines:
                break
            data = b"".join(lines)
            if not data.endswith(b"\n"):  # last line of a file without a final newline
                data += b"\n"
            yield _Chunk(data, lines, line_no, offset)
            line_no += len(lines)
            offset += sum(map(len, lines))
            if bar is not None:
                pos = raw.tell()  # compressed position for .gz, so the bar matches the file size
                bar.update(pos - progress_pos)
                progress_pos = pos


def _parse_checked(chunk: _Chunk, path: Path, opts: PreprocessOptions, bad: _BadLines | None):
    """Parse a chunk; raise on the first malformed line unless skipping (then count it into ``bad``)."""
    parsed = parse_chunk(chunk.data)
    if len(parsed.bad_lines):
        line_offsets = np.concatenate([[0], np.cumsum([len(line) for line in chunk.lines])])
    for i in parsed.bad_lines.tolist():
        line = chunk.lines[i]
        where = f"{path}:{chunk.first_line + i} (byte offset {chunk.byte_offset + int(line_offsets[i])})"
        reason = describe_bad_line(line)
        if not opts.skip_bad_lines:
            raise CriteoFormatError(f"{where}: {reason}; pass --skip-bad-lines to skip such lines")
        if bad is not None:
            bad.count += 1
            if len(bad.examples) < _MAX_BAD_EXAMPLES:
                bad.examples.append(f"{where}: {reason}")
    return parsed


class _BinaryFileWriter:
    """Appends arrays to one raw binary file, keeping its size and sha256 as it goes."""

    def __init__(self, path: Path, dtype: str):
        self.path, self.dtype = path, np.dtype(dtype)
        self.file = open(path, "wb")
        self.sha = hashlib.sha256()
        self.bytes = 0

    def write(self, array) -> None:
        data = np.ascontiguousarray(np.asarray(array).astype(self.dtype, copy=False))
        view = memoryview(data).cast("B")
        self.sha.update(view)
        self.file.write(view)
        self.bytes += view.nbytes

    def close(self) -> dict:
        self.file.close()
        return {"name": self.path.name, "dtype": self.dtype.name, "bytes": self.bytes, "sha256": self.sha.hexdigest()}


def _prepare_output(out: Path, overwrite: bool) -> Path:
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} already exists and is not empty; pass --overwrite to replace it")
    partial = out.parent / f".{out.name}.partial"
    if partial.exists():  # left by an earlier run that was killed
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    return partial


def _write_meta(directory: Path, meta: dict) -> None:
    tmp = directory / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, directory / "meta.json")


def _publish(partial: Path, out: Path) -> None:
    """Move the finished dataset into place; an old one (with --overwrite) is moved aside first."""
    if out.exists():
        old = out.parent / f".{out.name}.old"
        if old.exists():
            shutil.rmtree(old)
        os.replace(out, old)
        os.replace(partial, out)
        shutil.rmtree(old)
    else:
        os.replace(partial, out)


def _day_rows(opts: PreprocessOptions, sources: list[_SourceStats], num_rows: int) -> list[int] | None:
    if opts.files_are_days:
        return [s.rows for s in sources]
    if opts.days > 0:
        return [len(part) for part in np.array_split(np.arange(num_rows), opts.days)]
    return None


def preprocess(inputs: list[str | Path], out: str | Path, opts: PreprocessOptions) -> dict:
    """Convert Criteo TSV files (plain or gzip) into a binary dataset at ``out``; returns its meta.json content."""
    if [opts.hash_rows, opts.min_freq, opts.vocab].count(None) != 2:
        raise ValueError("give exactly one of hash_rows (hashing), min_freq (build a frequency-threshold vocabulary) "
                         "or vocab (map through a saved vocabulary)")
    if opts.hash_rows is not None:
        if len(opts.hash_rows) == 1:
            opts.hash_rows = opts.hash_rows * NUM_SPARSE
        if len(opts.hash_rows) != NUM_SPARSE or min(opts.hash_rows) <= 0:
            raise ValueError(f"hash_rows needs 1 or {NUM_SPARSE} positive values, got {opts.hash_rows}")
    if opts.min_freq is not None and opts.min_freq < 1:
        raise ValueError(f"min_freq must be >= 1, got {opts.min_freq}")
    if opts.id_dtype not in ("int32", "int64") or opts.label_dtype not in ("float32", "uint8"):
        raise ValueError(f"id_dtype must be int32/int64 and label_dtype float32/uint8, got {opts.id_dtype}, {opts.label_dtype}")
    paths = [Path(p) for p in inputs]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"input file {p} does not exist")
    out = Path(out)
    started = time.perf_counter()
    vocab = load_vocabulary(opts.vocab) if opts.vocab is not None else None  # before any output exists
    partial = _prepare_output(out, opts.overwrite)
    try:
        meta = _convert(paths, partial, opts, vocab)
        meta["seconds"] = round(time.perf_counter() - started, 3)
        _write_meta(partial, meta)
        _publish(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return meta


def _convert(paths: list[Path], partial: Path, opts: PreprocessOptions, vocab) -> dict:
    sources = [_SourceStats(str(p.resolve()), p.stat().st_size) for p in paths]
    total_bytes = sum(s.bytes for s in sources)
    bad = _BadLines()
    dense_w = _BinaryFileWriter(partial / "dense.bin", "float32")
    labels_w = _BinaryFileWriter(partial / "labels.bin", opts.label_dtype)
    sparse_w = _BinaryFileWriter(partial / "sparse.bin", opts.id_dtype)
    counter = ValueCounter() if opts.min_freq is not None else None
    hash_rows = np.array(opts.hash_rows or [1] * NUM_SPARSE, dtype=np.int64)[None, :]

    # pass 1: dense + labels; sparse too when hashing or given a vocabulary, value counts when building one
    desc = "count + dense" if counter is not None else "preprocess"
    with tqdm(total=total_bytes, unit="B", unit_scale=True, desc=desc, disable=not opts.progress) as bar:
        for path, src in zip(paths, sources, strict=True):
            for chunk in _iter_chunks(path, opts.chunk_rows, bar):
                parsed = _parse_checked(chunk, path, opts, bad)
                src.lines += len(chunk.lines)
                src.bad_lines += len(parsed.bad_lines)
                src.rows += int(parsed.labels.shape[0])
                dense_w.write(dense_transform(parsed.dense_raw))
                labels_w.write(parsed.labels)
                if counter is not None:
                    counter.add(table_keys(parsed.sparse_raw, parsed.sparse_empty))
                elif vocab is not None:
                    sparse_w.write(map_to_vocabulary(parsed.sparse_raw, parsed.sparse_empty, vocab))
                else:
                    sparse_w.write(parsed.sparse_raw % hash_rows)
    num_rows = sum(s.rows for s in sources)

    if counter is not None:  # pass 2: map every value through the vocabulary just built
        vocab = counter.vocabulary(opts.min_freq)
        del counter
        with tqdm(total=total_bytes, unit="B", unit_scale=True, desc="map ids", disable=not opts.progress) as bar:
            for path in paths:
                for chunk in _iter_chunks(path, opts.chunk_rows, bar):
                    parsed = _parse_checked(chunk, path, opts, None)
                    sparse_w.write(map_to_vocabulary(parsed.sparse_raw, parsed.sparse_empty, vocab))
        if sparse_w.bytes != num_rows * NUM_SPARSE * np.dtype(opts.id_dtype).itemsize:
            raise RuntimeError("the input files changed between the counting and the mapping pass")
    table_rows = vocab.table_rows if vocab is not None else list(opts.hash_rows)
    vocab_info = save_vocabulary(partial / VOCAB_DIR, vocab) if vocab is not None else None
    if opts.id_dtype == "int32" and max(table_rows) > np.iinfo(np.int32).max:
        raise ValueError(f"a table has {max(table_rows)} rows, too many for --id-dtype int32; use int64")

    files = {"dense": dense_w.close(), "sparse": sparse_w.close(), "labels": labels_w.close()}
    files["dense"]["shape"] = [num_rows, NUM_DENSE]
    files["sparse"]["shape"] = [num_rows, NUM_SPARSE]
    files["labels"]["shape"] = [num_rows]
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "num_rows": num_rows,
        "num_dense": NUM_DENSE,
        "dense_names": DENSE_NAMES,
        "feature_names": SPARSE_NAMES,
        "table_rows": table_rows,
        "days": _day_rows(opts, sources, num_rows),
        "files": files,
        # the vocabulary in vocab/ (vocab/vocab.json describes it too); None when hashing
        "vocabulary": {"dir": VOCAB_DIR, **vocab_info} if vocab_info is not None else None,
        "options": {
            "ids": "hash" if opts.hash_rows is not None else "vocabulary",
            "hash_rows": opts.hash_rows,
            "min_freq": vocab.min_freq if vocab is not None else None,
            "vocab_from": str(Path(opts.vocab).resolve()) if opts.vocab is not None else None,
            "id_dtype": opts.id_dtype,
            "label_dtype": opts.label_dtype,
            "skip_bad_lines": opts.skip_bad_lines,
            "chunk_rows": opts.chunk_rows,
            "dense_transform": "log(1 + max(x, 0)), empty -> 0",
        },
        "sources": [vars(s) for s in sources],
        "bad_lines": {"count": bad.count, "examples": bad.examples},
    }
