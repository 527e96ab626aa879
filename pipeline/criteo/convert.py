"""Criteo Kaggle / 1TB TSV -> RecFuse binary dataset (pipeline/dataset_format.py; docs/data.md).

    python -m pipeline.criteo preprocess day_0.gz day_1.gz ... --out DIR (--hash-rows N | --min-freq T | --vocab D)

Categorical ids, per table:
    --hash-rows N   id = int(hex, 16) % N; an empty field counts as hex 00000000 (row 0).
    --min-freq T    two passes: count every value, keep those seen >= T times as ids 1..V by decreasing
                    count (ties: smaller hex value first); rarer values and empty fields share row 0.
                    The vocabulary is saved in DIR/vocab (pipeline/criteo/vocab.py).
    --vocab D       one pass through the vocabulary saved in D: the same raw values get the same ids.
Dense: log(1 + max(x, 0)), an empty field 0. Everything is written under ``.DIR.partial`` and renamed to DIR
only after meta.json (written last) is complete. --workers N processes parse pieces of the input
(pipeline/criteo/work.py, pool.py) and this process writes their arrays in input order, so the output is
byte-identical for any N.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.criteo.parse import DENSE_NAMES, NUM_DENSE, NUM_SPARSE, SPARSE_NAMES
from pipeline.criteo.pool import make_pool
from pipeline.criteo.vocab import (
    VOCAB_DIR,
    Vocabulary,
    build_vocabulary,
    load_vocabulary,
    save_vocabulary,
)
from pipeline.criteo.work import (
    MAX_BAD_EXAMPLES,
    Job,
    Result,
    flush_counts,
    iter_tasks,
    merge_partition,
    release,
    run_task,
    vocab_files,
)

FORMAT_NAME = "recfuse-criteo-binary"
FORMAT_VERSION = 1
_WORK_DIR = ".work"  # scratch space inside the .partial directory, removed before it is published


class CriteoFormatError(ValueError):
    """A malformed input line; the message names file, line number and byte offset."""


@dataclass
class PreprocessOptions:
    hash_rows: list[int] | None = None  # one per table (a single value is repeated)
    min_freq: int | None = None
    # map through the vocabulary saved in this dataset (or its vocab/ directory)
    vocab: str | None = None
    skip_bad_lines: bool = False
    # lines per piece of work; memory is about 1 KiB per line, for ~3 pieces per worker
    chunk_rows: int = 65_536
    id_dtype: str = "int32"
    label_dtype: str = "float32"
    # > 0: record the rows as that many equal "days" (for the MLPerf-style eval split)
    days: int = 0
    files_are_days: bool = False  # record one "day" per input file (Criteo 1TB day_0 .. day_23)
    # parsing processes; None: os.cpu_count(); 1: everything in this process
    workers: int | None = None
    overwrite: bool = False
    progress: bool = True


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


class _BinaryFileWriter:
    """Appends arrays to one raw binary file, keeping its size and sha256 as it goes."""

    def __init__(self, path: Path, dtype: str):
        self.path, self.dtype = path, np.dtype(dtype)
        self.file = open(path, "wb")
        self.sha = hashlib.sha256()
        self.bytes = 0

    def write(self, array: np.ndarray) -> None:
        data = np.ascontiguousarray(array.astype(self.dtype, copy=False))
        view = memoryview(data).cast("B")
        self.sha.update(view)
        self.file.write(view)
        self.bytes += view.nbytes

    def close(self) -> dict:
        self.file.close()
        return {
            "name": self.path.name,
            "dtype": self.dtype.name,
            "bytes": self.bytes,
            "sha256": self.sha.hexdigest(),
        }


def _prepare_output(out: Path, overwrite: bool) -> Path:
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{out} already exists and is not empty; pass --overwrite to replace it"
        )
    partial = out.parent / f".{out.name}.partial"
    if partial.exists():  # left by an earlier run that was killed
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    return partial


def _write_meta(directory: Path, meta: dict) -> None:
    tmp = directory / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2, allow_nan=False) + "\n")
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


def _day_rows(
    opts: PreprocessOptions, sources: list[_SourceStats], num_rows: int
) -> list[int] | None:
    if opts.files_are_days:
        return [s.rows for s in sources]
    if opts.days > 0:
        return [len(part) for part in np.array_split(np.arange(num_rows), opts.days)]
    return None


def preprocess(inputs: list[str | Path], out: str | Path, opts: PreprocessOptions) -> dict:
    """Convert Criteo TSV files (plain or gzip) into a binary dataset at ``out``; returns its meta.json content."""
    if [opts.hash_rows, opts.min_freq, opts.vocab].count(None) != 2:
        raise ValueError(
            "give exactly one of hash_rows (hashing), min_freq (build a frequency-threshold vocabulary) "
            "or vocab (map through a saved vocabulary)"
        )
    if opts.hash_rows is not None:
        if len(opts.hash_rows) == 1:
            opts.hash_rows = opts.hash_rows * NUM_SPARSE
        if len(opts.hash_rows) != NUM_SPARSE or min(opts.hash_rows) <= 0:
            raise ValueError(
                f"hash_rows needs 1 or {NUM_SPARSE} positive values, got {opts.hash_rows}"
            )
    if opts.min_freq is not None and opts.min_freq < 1:
        raise ValueError(f"min_freq must be >= 1, got {opts.min_freq}")
    if opts.id_dtype not in ("int32", "int64") or opts.label_dtype not in ("float32", "uint8"):
        raise ValueError(
            f"id_dtype must be int32/int64 and label_dtype float32/uint8, got {opts.id_dtype}, {opts.label_dtype}"
        )
    workers = opts.workers if opts.workers is not None else os.cpu_count() or 1
    if workers < 1 or opts.chunk_rows < 1:
        raise ValueError(
            f"workers and chunk_rows must be >= 1, got {workers} and {opts.chunk_rows}"
        )
    paths = [Path(p) for p in inputs]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"input file {p} does not exist")
    out = Path(out)
    started = time.perf_counter()
    # before any output exists
    vocab = load_vocabulary(opts.vocab) if opts.vocab is not None else None
    partial = _prepare_output(out, opts.overwrite)
    try:
        with make_pool(workers) as pool:
            meta = _convert(paths, partial, opts, vocab, pool)
        meta["seconds"] = round(time.perf_counter() - started, 3)
        meta["workers"] = workers
        _write_meta(partial, meta)
        _publish(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return meta


def _check_bad_lines(
    result: Result, path: Path, first_line: int, opts: PreprocessOptions, bad: _BadLines | None
):
    """Raise on a task's first malformed line unless skipping (then count its lines into ``bad``)."""
    for index, offset, reason in result.bad:
        where = f"{path}:{first_line + index} (byte offset {offset})"
        if not opts.skip_bad_lines:
            raise CriteoFormatError(f"{where}: {reason}; pass --skip-bad-lines to skip such lines")
        if bad is not None and len(bad.examples) < MAX_BAD_EXAMPLES:
            bad.examples.append(f"{where}: {reason}")
    if bad is not None:
        bad.count += result.bad_count


def _run_pass(
    pool,
    job: Job,
    paths: list[Path],
    opts: PreprocessOptions,
    desc: str,
    bad: _BadLines | None,
    writers: dict[str, _BinaryFileWriter] | None,
) -> list[_SourceStats]:
    """One pass over the input: pieces out to the workers, results back in input order, arrays into ``writers``."""
    sources = [_SourceStats(str(p.resolve()), p.stat().st_size) for p in paths]
    with tqdm(
        total=sum(s.bytes for s in sources),
        unit="B",
        unit_scale=True,
        desc=desc,
        disable=not opts.progress,
    ) as bar:
        for result in pool.imap(
            run_task, job, iter_tasks(paths, opts.chunk_rows), window=2 * pool.workers
        ):
            src = sources[result.source]
            _check_bad_lines(result, paths[result.source], src.lines + 1, opts, bad)
            src.lines += result.lines
            src.rows += result.rows
            src.bad_lines += result.bad_count
            # None: an empty piece (e.g. the end of a gzip file)
            if writers is not None and result.dense is not None:
                writers["dense"].write(result.dense)
                writers["labels"].write(result.labels)
                writers["sparse"].write(result.sparse)
            bar.update(result.progress)
    _require_rows(paths, sources)
    return sources


def _require_rows(paths: list[Path], sources: list[_SourceStats]) -> None:
    """An input without a single row would make an empty dataset that no run can train on."""
    if any(s.rows for s in sources):
        return
    bad = sum(s.bad_lines for s in sources)
    skipped = f" ({bad} malformed lines skipped)" if bad else ""
    names = ", ".join(str(p) for p in paths)
    raise CriteoFormatError(
        f"no rows in the input: {names} {'has' if len(paths) == 1 else 'have'} no data lines"
        f"{skipped}; a dataset needs at least one row"
    )


def _count_vocabulary(pool, job: Job, min_freq: int) -> Vocabulary:
    """Merge the workers' counters (after a "count" pass) into the vocabulary of values seen >= min_freq times."""
    pool.broadcast(flush_counts, job)
    parts = list(pool.imap(merge_partition, job, range(job.parts), window=job.parts))
    keys = np.concatenate([k for k, _ in parts])
    counts = np.concatenate([c for _, c in parts])
    # partitions are hash-spread; the vocabulary wants one sorted key list
    order = np.argsort(keys, kind="stable")
    return build_vocabulary(keys[order], counts[order], min_freq)


def _convert(
    paths: list[Path], partial: Path, opts: PreprocessOptions, vocab: Vocabulary | None, pool
) -> dict:
    work = (partial / _WORK_DIR).resolve()
    work.mkdir()
    job = Job(
        run_id=uuid.uuid4().hex,
        mode="hash",
        hash_rows=tuple(opts.hash_rows or ()),
        id_dtype=opts.id_dtype,
        label_dtype=opts.label_dtype,
        skip_bad_lines=opts.skip_bad_lines,
        work_dir=str(work),
        parts=pool.workers,
        min_freq=opts.min_freq or 1,
    )
    bad = _BadLines()
    counted = None
    if opts.min_freq is not None:  # pass 1: count every value (and find the bad lines)
        count_job = replace(job, mode="count")
        counted = _run_pass(pool, count_job, paths, opts, "count", bad, None)
        vocab = _count_vocabulary(pool, count_job, opts.min_freq)
    if vocab is not None:  # the workers map through a copy they memory-map
        for path, array in zip(vocab_files(str(work)), (vocab.keys, vocab.ids), strict=True):
            np.save(path, array)
        job = replace(job, mode="vocab")
    writers = {
        "dense": _BinaryFileWriter(partial / "dense.bin", "float32"),
        "sparse": _BinaryFileWriter(partial / "sparse.bin", opts.id_dtype),
        "labels": _BinaryFileWriter(partial / "labels.bin", opts.label_dtype),
    }
    desc = "map ids" if counted is not None else "preprocess"
    sources = _run_pass(pool, job, paths, opts, desc, bad if counted is None else None, writers)
    if counted is not None and [s.rows for s in sources] != [s.rows for s in counted]:
        raise RuntimeError("the input files changed between the counting and the mapping pass")
    pool.broadcast(release, job)  # the memory-mapped vocabulary copy, before its file goes
    shutil.rmtree(work)
    num_rows = sum(s.rows for s in sources)

    table_rows = vocab.table_rows if vocab is not None else list(opts.hash_rows)
    vocab_info = save_vocabulary(partial / VOCAB_DIR, vocab) if vocab is not None else None
    if opts.id_dtype == "int32" and max(table_rows) > np.iinfo(np.int32).max:
        raise ValueError(
            f"a table has {max(table_rows)} rows, too many for --id-dtype int32; use int64"
        )

    files = {name: writer.close() for name, writer in writers.items()}
    files["dense"]["shape"] = [num_rows, NUM_DENSE]
    files["sparse"]["shape"] = [num_rows, NUM_SPARSE]
    files["labels"]["shape"] = [num_rows]
    return _meta(opts, vocab, vocab_info, table_rows, files, sources, counted, bad)


def _meta(
    opts: PreprocessOptions,
    vocab: Vocabulary | None,
    vocab_info: dict | None,
    table_rows: list[int],
    files: dict,
    sources: list,
    counted: list | None,
    bad: _BadLines,
) -> dict:
    """meta.json of the converted dataset (the reader checks it; pipeline.dataset)."""
    num_rows = sum(s.rows for s in sources)
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
        "sources": [vars(s) for s in counted or sources],
        "bad_lines": {"count": bad.count, "examples": bad.examples},
    }
