"""Throughput of your-own-data ingestion: the converter (``python -m pipeline.ingest``) in rows/s with 1 and N
workers, and the dataset reader in batches/s at a batch of 65536 with 26 jagged features of mean bag length 8.

    python bench/ingest_throughput.py                    # 1M rows to convert, 4 global batches of 65536 to read
    python bench/ingest_throughput.py --quick            # seconds (tests/e2e/test_bench_ingest.py runs it)
    python bench/ingest_throughput.py --device cuda      # the converter's per-column work on cupy

Converter: a generated Parquet file (row groups of 65536, or a quarter of the rows; made once into --dir,
not timed) of events with a label, a weight, 13 dense columns (10% missing, log1p and standardize), a string
id (vocab, min_freq 2), an int id (hash), a list of strings (vocab, mean length 3) and a list of ints (hash,
mean length 8), converted by ``ingest()`` in this process (its workers spawned, their start-up timed); both
passes timed together. It checks that N workers wrote the bytes one worker wrote. GB/s counts the Parquet
file's bytes (compressed input) and the dataset's .bin bytes (output).

Reader: a dataset of R rows written directly (not timed): 13 dense, label, 26 jagged int32 features with bags
of 0..16 ids (mean 8). ``BinaryDataset.train_batches`` at the global batch, shuffled blocks of 8192 rows (as
training), each batch a ``Batch`` with a feature-major KeyedJagged; the files are in the page cache (just
written). Byte model per batch of B rows with N ids: dense 52B + labels 4B + offsets 26 x 4B + ids 4N (read);
GB/s = those bytes / time. Results are appended to bench/results/ingest.jsonl with machine, date and commit.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script
    sys.path.insert(0, str(ROOT))

from bench._common import git_commit  # noqa: E402
from pipeline.ingest import IngestOptions, ingest, load_schema  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "ingest.jsonl"
FEATURES, MEAN_BAG, NUM_DENSE = 26, 8, 13

SCHEMA = (
    "[label]\ncolumn = 'y'\n[weight]\ncolumn = 'w'\n"
    + "".join(
        f"[[dense]]\ncolumn = 'd{j}'\ntransform = '{('none', 'log1p', 'standardize')[j % 3]}'\n"
        for j in range(NUM_DENSE)
    )
    + (
        "[[categorical]]\ncolumn = 'user'\nmin_freq = 2\n"
        "[[categorical]]\ncolumn = 'shop'\ntype = 'int'\nencode = 'hash'\nrows = 100000\n"
        "[[categorical]]\ncolumn = 'genres'\nlist = true\nmax_len = 5\n"
        "[[categorical]]\ncolumn = 'clicks'\ntype = 'int'\nencode = 'hash'\nrows = 1000000\n"
        "list = true\nmax_len = 12\nkeep = 'last'\n"
    )
)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        return names[0] if names else platform.machine()
    except OSError:
        return platform.processor() or platform.machine()


def _digest(out: Path) -> str:
    """sha256 over the dataset's files but meta.json (which records the options and the time)."""
    sha = hashlib.sha256()
    for path in sorted(out.rglob("*")):
        if path.is_file() and path.name != "meta.json":
            sha.update(str(path.relative_to(out)).encode() + path.read_bytes())
    return sha.hexdigest()


def _lists(rng, rows: int, mean: int, values: pa.Array) -> pa.ListArray:
    """rows lists of 0..2*mean elements taken from values (no per-row Python)."""
    lengths = rng.integers(0, 2 * mean + 1, rows)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    picks = pa.array(rng.integers(0, len(values), int(offsets[-1])))
    return pa.ListArray.from_arrays(pa.array(offsets), values.take(picks))


def generate(directory: Path, rows: int, seed: int = 0) -> Path:
    """The events Parquet file (made once per (rows, seed))."""
    path = directory / f"events_{rows}_{seed}.parquet"
    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    users = pa.array([f"user-{i:07d}" for i in range(max(rows // 4, 1))])
    genres = pa.array([f"genre-{i}" for i in range(500)])
    table = {"y": (rng.random(rows) < 0.1).astype(np.float32), "w": rng.uniform(0.5, 2, rows)}
    for j in range(NUM_DENSE):
        dense = pa.array(rng.lognormal(1, 1, rows), mask=rng.random(rows) < 0.1)
        table[f"d{j}"] = dense
    table["user"] = users.take(pa.array(rng.zipf(1.2, rows) % len(users)))
    table["shop"] = rng.integers(0, 2**40, rows)
    table["genres"] = _lists(rng, rows, 3, genres)
    table["clicks"] = _lists(rng, rows, MEAN_BAG, pa.array(rng.integers(0, 2**40, 100_000)))
    partial = path.with_suffix(".partial")
    pq.write_table(pa.table(table), partial, row_group_size=min(65536, max(rows // 4, 1)))
    os.replace(partial, path)
    return path


def measure_convert(directory: Path, rows: int, workers: list[int], device: str) -> list[dict]:
    source = generate(directory, rows)
    (directory / "schema.toml").write_text(SCHEMA)
    schema = load_schema(directory / "schema.toml")
    out, digests = [], {}
    for n in workers:
        target = directory / f"out_w{n}"
        started = time.perf_counter()
        meta = ingest(
            schema, [str(source)], target, IngestOptions(workers=n, overwrite=True, device=device)
        )
        seconds = time.perf_counter() - started
        digests[n] = _digest(target)
        written = sum(p.stat().st_size for p in target.glob("*.bin"))
        out.append(
            {
                "part": "convert",
                "device": device,
                "rows": meta["num_rows"],
                "workers": n,
                "seconds": round(seconds, 3),
                "rows_per_s": round(meta["num_rows"] / seconds),
                "input_gb_per_s": round(source.stat().st_size / seconds / 1e9, 4),
                "output_gb_per_s": round(written / seconds / 1e9, 4),
                "same_bytes_as_one_worker": digests[n] == digests[workers[0]],
            }
        )
    return out


def write_reader_dataset(directory: Path, rows: int, seed: int = 1) -> Path:
    """A dataset of rows with 13 dense and 26 jagged features of bags of 0..16 ids (pipeline.ingest's writer)."""
    from pipeline.ingest.output import DatasetWriter

    target = directory / f"reader_{rows}"
    if (target / "meta.json").exists():
        return target
    lines = ["[label]\ncolumn = 'y'\n"] + [
        f"[[dense]]\ncolumn = 'd{j}'\n" for j in range(NUM_DENSE)
    ]
    lines += [
        f"[[categorical]]\ncolumn = 'f{f}'\ntype = 'int'\nencode = 'raw'\nrows = 100000\nlist = true\n"
        for f in range(FEATURES)
    ]
    (directory / "reader.toml").write_text("".join(lines))
    schema = load_schema(directory / "reader.toml")
    target.mkdir(parents=True, exist_ok=True)
    writer = DatasetWriter(target, schema, {f"f{f}": 100000 for f in range(FEATURES)})
    rng = np.random.default_rng(seed)
    for lo in range(0, rows, 65536):
        n = min(65536, rows - lo)
        jagged = {}
        for f in range(FEATURES):
            lengths = rng.integers(0, 2 * MEAN_BAG + 1, n)
            jagged[f"f{f}"] = (rng.integers(0, 100000, int(lengths.sum())), lengths)
        dense = rng.normal(size=(n, NUM_DENSE)).astype(np.float32)
        labels = (rng.random(n) < 0.1).astype(np.float32)
        writer.append(labels, None, dense, np.zeros((n, 0), np.int64), jagged)
    writer.finish({"files": [], "vocab": None}, {"generated": "bench/ingest_throughput.py"})
    return target


def measure_reader(directory: Path, batch: int, batches: int) -> dict:
    from pipeline.dataset import BinaryDataset

    dataset = BinaryDataset(write_reader_dataset(directory, batch * batches))
    started, ids, count = time.perf_counter(), 0, 0
    for b in dataset.train_batches(batch, row_range=(0, dataset.num_rows), shuffle_seed=0):
        ids += b.sparse.values.numel()
        count += 1
    seconds = time.perf_counter() - started
    read = count * batch * (NUM_DENSE * 4 + 4 + FEATURES * 4) + ids * 4
    return {
        "part": "reader",
        "batch": batch,
        "features": FEATURES,
        "mean_bag": round(ids / (count * batch * FEATURES), 3),
        "batches": count,
        "seconds": round(seconds, 3),
        "batches_per_s": round(count / seconds, 3),
        "rows_per_s": round(count * batch / seconds),
        "gb_per_s": round(read / seconds / 1e9, 4),
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: seconds, for the test")
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows to convert")
    parser.add_argument("--workers", default="", help="worker counts (default: 1 and the cores)")
    parser.add_argument("--batch", type=int, default=65536, help="the reader's global batch")
    parser.add_argument("--batches", type=int, default=4, help="batches the reader reads")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="converter arrays")
    parser.add_argument(
        "--dir", default="", help="where inputs are made and kept (default: a temp dir)"
    )
    parser.add_argument(
        "--results", default=str(RESULTS), help="JSON lines to append to ('' for none)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.quick:
        args.rows, args.batch, args.batches = 5000, 1024, 4
    cores = os.cpu_count() or 1
    workers = [int(w) for w in args.workers.split(",")] if args.workers else sorted({1, cores})
    machine = {
        "cpu": _cpu_name(),
        "cores": cores,
        "host": platform.node(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "quick": args.quick,
    }
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(args.dir or scratch)
        directory.mkdir(parents=True, exist_ok=True)
        results = measure_convert(directory, args.rows, workers, args.device)
        results.append(measure_reader(directory, args.batch, args.batches))
    for r in results:
        r.update(machine)
        print(json.dumps(r))
    if args.results:
        Path(args.results).parent.mkdir(parents=True, exist_ok=True)
        with open(args.results, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in results)
    return 0 if all(r.get("same_bytes_as_one_worker", True) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
