"""The units of work of the Criteo preprocessing: how the input is cut, and what a worker does with a piece.

Cutting (in the parent, ``iter_tasks``): a plain file is cut into byte ranges that each start at a
line start, of about ``chunk_rows`` lines (the mean line length is taken from the file's first MiB);
the parent reads only a few bytes around each cut and every worker reads its own range. A gzip
stream cannot be entered in the middle, so the parent decompresses it and hands out pieces of whole
lines: one decompressor feeding the parsers. It gives ~220 MB/s of text on the 2-core machine
(1.0 CPU-s for the 1M-row, 222 MB benchmark file), so with many cores it becomes the limit for gzip
input; several gzip files could be decompressed side by side, which this does not do yet.

A task knows the byte offset of its first line but not its line number (that would need every
earlier line counted): the worker reports bad lines by their index within the task and the parent,
which sees the results in input order, adds the lines of the tasks before it.

Worker side (module functions, called as fn(job, arg) by pool.ProcessPool or pool.InlinePool):
    run_task        parse one task; mode "hash" / "vocab": return the output arrays; mode "count":
                    add its values to this worker's counter and return only the line counts
    flush_counts    write this worker's counter as ``parts`` hash partitions (files in job.work_dir)
    merge_partition sum one partition over all workers' files, keep the values seen >= min_freq
    release         drop the worker's state of the run
Nothing mutable is shared: the counter and a memory-mapped copy of the vocabulary live in each
worker, tagged with the run they belong to.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.criteo.parse import dense_transform, describe_bad_line, parse_chunk
from pipeline.criteo.vocab import (
    ValueCounter,
    Vocabulary,
    map_to_vocabulary,
    merge_counts,
    table_keys,
)

MAX_BAD_EXAMPLES = 20  # per task; the parent keeps the first 20 overall
_HEAD_BYTES = 1 << 20  # what the mean line length is estimated from
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class Job:
    """What every task of one pass does (small: sent along with every task)."""

    run_id: str  # per preprocess() call: worker state from another run is dropped
    mode: str  # "hash" | "vocab" | "count"
    hash_rows: tuple[int, ...] | None
    id_dtype: str
    label_dtype: str
    skip_bad_lines: bool
    work_dir: str  # scratch directory inside the .partial output: vocabulary copy, count partitions
    parts: int = 1  # hash partitions of the counts (one per worker)
    min_freq: int = 1


@dataclass
class Task:
    source: int  # index of the input file
    path: str
    start: int  # byte offset of the task's first line in the (decompressed) file
    end: int
    # gzip: the decompressed lines; plain files: None, the worker reads [start, end)
    data: bytes | None
    final: bool  # the task ends its file (a missing final newline is added, as for any last line)
    progress: int  # input bytes (compressed ones for gzip) this task moves the progress bar by


@dataclass
class Result:
    source: int  # the task's
    progress: int  # the task's
    lines: int
    rows: int
    bad_count: int
    # (line index within the task, byte offset in the file, reason), the first few
    bad: list[tuple[int, int, str]]
    dense: np.ndarray | None = None
    labels: np.ndarray | None = None
    sparse: np.ndarray | None = None


def is_gzip(path: Path) -> bool:
    """gzip is recognised by its magic bytes, not its name."""
    with open(path, "rb") as f:
        return f.read(2) == _GZIP_MAGIC


def _range_bytes(head: bytes, chunk_rows: int) -> int:
    line_bytes = len(head) / max(head.count(b"\n"), 1)
    return max(int(chunk_rows * line_bytes), 1)


def _next_line_start(f, pos: int, size: int) -> int:
    """The first line start at or after ``pos`` (0 < pos < size), or ``size``: a line starts after a newline."""
    f.seek(pos - 1)
    while True:
        block = f.read(1 << 16)
        if not block:
            return size
        newline = block.find(b"\n")
        if newline >= 0:
            return f.tell() - len(block) + newline + 1


def _plain_tasks(source: int, path: Path, chunk_rows: int) -> Iterator[Task]:
    size = path.stat().st_size
    with open(path, "rb") as f:
        step = _range_bytes(f.read(_HEAD_BYTES), chunk_rows)
        start = 0
        while start < size:
            end = _next_line_start(f, start + step, size) if start + step < size else size
            yield Task(source, str(path.resolve()), start, end, None, end == size, end - start)
            start = end


class GzipError(ValueError):
    """A gzip input that cannot be decompressed to its end; the message names the file."""


def _gunzip(raw, path: Path) -> Iterator[tuple[bytes, int]]:
    """(decompressed bytes, compressed bytes read so far) of a gzip file, members one after the other.

    zlib directly rather than gzip.GzipFile: ~30% less CPU (1.0 against 1.4 s for 1M rows), and this
    runs in the parent, the one serial stage of gzip input.
    """
    decompressor = zlib.decompressobj(zlib.MAX_WBITS | 16)
    consumed = 0
    started = False  # the current member has begun
    while block := raw.read(1 << 20):  # small enough that a piece overshoots its size by little
        consumed += len(block)
        while block:
            try:
                out = decompressor.decompress(block)
            except zlib.error as e:
                raise GzipError(
                    f"{path}: not valid gzip data before compressed byte offset {consumed} ({e})"
                ) from None
            started = True
            if out:
                yield out, consumed
            if not decompressor.eof:
                break
            block, started = decompressor.unused_data, False  # a concatenated member follows
            decompressor = zlib.decompressobj(zlib.MAX_WBITS | 16)
    if started and not decompressor.eof:
        raise GzipError(f"{path}: the gzip data ends before its end marker (truncated file?)")


def _gzip_tasks(source: int, path: Path, chunk_rows: int) -> Iterator[Task]:
    size, resolved = path.stat().st_size, str(path.resolve())
    offset = reported = 0
    parts, have, step = [], 0, None
    with open(path, "rb") as raw:
        for block, consumed in _gunzip(raw, path):
            parts.append(block)
            have += len(block)
            if step is None and have >= _HEAD_BYTES:
                step = _range_bytes(b"".join(parts)[:_HEAD_BYTES], chunk_rows)
            if step is None or have < step:
                continue
            pending = b"".join(parts)
            cut = pending.rfind(b"\n") + 1
            if cut:
                yield Task(
                    source,
                    resolved,
                    offset,
                    offset + cut,
                    pending[:cut],
                    False,
                    consumed - reported,
                )
                offset, reported = offset + cut, consumed
            parts, have = [pending[cut:]], len(pending) - cut
    pending = b"".join(parts)
    if pending or size > reported:
        yield Task(source, resolved, offset, offset + len(pending), pending, True, size - reported)


def iter_tasks(paths: list[Path], chunk_rows: int) -> Iterator[Task]:
    for source, path in enumerate(paths):
        yield from (_gzip_tasks if is_gzip(path) else _plain_tasks)(source, path, chunk_rows)


# --- worker side -------------------------------------------------------------------------------


class _State:
    run_id: str | None = None
    counter: ValueCounter | None = None
    vocab: Vocabulary | None = None


def release(job: Job, _arg=None) -> None:
    """Drop this worker's state of the run (in the parent itself with one worker)."""
    _State.run_id, _State.counter, _State.vocab = None, None, None


def _state(job: Job) -> type[_State]:
    if _State.run_id != job.run_id:
        _State.run_id, _State.counter, _State.vocab = job.run_id, None, None
    return _State


def _read(task: Task) -> bytes:
    if task.data is not None:
        return task.data
    with open(task.path, "rb") as f:
        f.seek(task.start)
        data = f.read(task.end - task.start)
    if len(data) != task.end - task.start:
        raise RuntimeError(
            f"{task.path} changed while it was being read (expected {task.end - task.start} bytes "
            f"at byte offset {task.start}, got {len(data)})"
        )
    return data


def _bad_lines(data: bytes, task: Task, bad: np.ndarray, limit: int) -> list[tuple[int, int, str]]:
    line_ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10)
    line_starts = np.concatenate([[0], line_ends[:-1] + 1])
    found = []
    for i in bad[:limit].tolist():
        start, end = int(line_starts[i]), int(line_ends[i]) + 1
        found.append((i, task.start + start, describe_bad_line(data[start:end])))
    return found


def vocab_files(work_dir: str) -> tuple[Path, Path]:
    return Path(work_dir) / "vocab_keys.npy", Path(work_dir) / "vocab_ids.npy"


def _vocabulary(job: Job) -> Vocabulary:
    state = _state(job)
    if state.vocab is None:  # memory-mapped: every worker reads the one copy in the page cache
        keys, ids = (np.load(p, mmap_mode="r") for p in vocab_files(job.work_dir))
        state.vocab = Vocabulary(keys, ids, [], job.min_freq)
    return state.vocab


def run_task(job: Job, task: Task) -> Result:
    data = _read(task)
    if task.final and data and not data.endswith(b"\n"):
        data += b"\n"
    if not data:
        return Result(task.source, task.progress, 0, 0, 0, [])
    parsed = parse_chunk(data)
    bad_count = int(parsed.bad_lines.size)
    bad = []
    if bad_count:
        bad = _bad_lines(
            data, task, parsed.bad_lines, MAX_BAD_EXAMPLES if job.skip_bad_lines else 1
        )
        if not job.skip_bad_lines:  # the parent raises on it; no need for the arrays
            return Result(task.source, task.progress, parsed.num_lines, 0, bad_count, bad)
    result = Result(
        task.source, task.progress, parsed.num_lines, int(parsed.labels.shape[0]), bad_count, bad
    )
    if job.mode == "count":
        state = _state(job)
        if state.counter is None:
            state.counter = ValueCounter()
        state.counter.add(table_keys(parsed.sparse_raw, parsed.sparse_empty))
        return result
    if job.mode == "vocab":
        sparse = map_to_vocabulary(parsed.sparse_raw, parsed.sparse_empty, _vocabulary(job))
    else:
        sparse = parsed.sparse_raw % np.array(job.hash_rows, dtype=np.int64)[None, :]
    result.dense = dense_transform(parsed.dense_raw)
    result.labels = parsed.labels.astype(job.label_dtype)
    result.sparse = sparse.astype(job.id_dtype)
    return result


def _partition_of(keys: np.ndarray, parts: int) -> np.ndarray:
    # a multiplicative hash spreads every table over all partitions (a key range would not: tables differ in size)
    return ((keys.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(40)) % np.uint64(
        parts
    )


def _count_file(job: Job, worker: int, part: int) -> Path:
    return Path(job.work_dir) / f"counts-w{worker}-p{part}.npy"


def flush_counts(job: Job, worker: int) -> int:
    """Write this worker's (key, count) pairs as job.parts partition files; returns how many keys it had."""
    state = _state(job)
    keys, counts = (
        state.counter.result() if state.counter is not None else (np.zeros(0, np.int64),) * 2
    )
    state.counter = None
    part_of = _partition_of(keys, job.parts)
    for part in range(job.parts):
        mine = part_of == part
        np.save(_count_file(job, worker, part), np.stack([keys[mine], counts[mine]]))
    return int(keys.size)


def merge_partition(job: Job, part: int) -> tuple[np.ndarray, np.ndarray]:
    """(sorted keys, counts) of one partition summed over the workers' files, only those seen >= min_freq."""
    files = sorted(Path(job.work_dir).glob(f"counts-w*-p{part}.npy"))
    pairs = [np.load(f) for f in files]
    for f in files:
        os.remove(f)
    keys, counts = merge_counts(
        np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])
    )
    kept = counts >= job.min_freq
    return keys[kept], counts[kept]
