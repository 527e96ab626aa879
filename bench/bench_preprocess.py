"""Criteo preprocessing throughput against the number of worker processes.

    python bench/bench_preprocess.py                          # 1M rows, workers 1..cores, hashing and --min-freq
    python bench/bench_preprocess.py --rows 200000 --workers 1,2 --modes hash --gzip

Generates a deterministic Criteo-format TSV of --rows lines (and a gzip copy with --gzip) once into
--dir (kept there for later runs; generation is not timed), then runs
``python -m pipeline.criteo preprocess`` in a fresh process for every (mode, input, workers) and
reports preprocess()'s own wall time from meta.json (worker start-up included, interpreter start-up
and imports not). Prints rows/s and the speed-up over one worker, checks that every worker count
wrote the same bytes as one worker, and appends one JSON line per run to
bench/results/preprocess.jsonl with the machine, date and commit.
Measure on an otherwise idle machine: the numbers mean nothing when other work shares the cores. To
tell, every run records its own CPU seconds (the preprocess process and its workers) and the CPU
seconds the rest of the machine used meanwhile (``other_cpu_s``, from /proc/stat); with --repeats the
run with the least other CPU is kept, the fastest among equals.

The generated data looks like Criteo's, not like its exact statistics: label 1 for ~26% of rows;
13 heavy-tailed counts (empty up to ~45% per column, some negative I2); 26 categoricals drawn with a
power law over the Criteo Kaggle table sizes and written as 8 hex digits (empty up to ~40%); about
220 bytes a line (Kaggle's train.txt: ~240).
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import hashlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from training import jsonio  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "preprocess.jsonl"

# rows of the 26 Criteo Kaggle tables (as counted by the DLRM reference): the generator's value ranges
KAGGLE_TABLE_ROWS = [
    1460,
    583,
    10131227,
    2202608,
    305,
    24,
    12517,
    633,
    3,
    93145,
    5683,
    8351593,
    3194,
    27,
    14992,
    5461306,
    10,
    5652,
    2173,
    4,
    7046547,
    18,
    15,
    286181,
    105,
    142572,
]
_DIGITS = np.frombuffer(b"0123456789", dtype=np.uint8)
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_DENSE_WIDTH = 7  # counts < 10**7
_BLOCK_ROWS = 65536
MODES = {"hash": ["--hash-rows", "1000000"], "min-freq": ["--min-freq", "3"]}


def _block(rng: np.random.Generator, n: int) -> bytes:
    """n TSV lines. Built as a fixed-width byte matrix plus a mask of the bytes kept: no per-line Python."""
    label = rng.random(n) < 0.26
    dense = np.minimum(
        np.floor(np.expm1(rng.exponential(2.0, size=(n, 13)))), 10**_DENSE_WIDTH - 1
    ).astype(np.int64)
    negative_i2 = rng.random(n) < 0.05
    dense[negative_i2, 1] = -rng.integers(1, 4, int(negative_i2.sum()))
    dense_empty = rng.random((n, 13)) < np.linspace(0.0, 0.45, 13)
    # power law: id 0 hottest
    ids = np.floor(np.array(KAGGLE_TABLE_ROWS) * rng.random((n, 26)) ** 4).astype(np.uint64)
    values = (
        ids * np.uint64(2654435761) + np.arange(26, dtype=np.uint64) * np.uint64(0x9E3779B9)
    ) & np.uint64(0xFFFFFFFF)
    sparse_empty = rng.random((n, 26)) < np.linspace(0.0, 0.4, 26)

    field = _DENSE_WIDTH + 2  # sign, digits, tab
    dense_cols = 13 * field
    text = np.zeros((n, 2 + dense_cols + 26 * 9), dtype=np.uint8)
    keep = np.zeros(text.shape, dtype=bool)
    text[:, 0], text[:, 1], keep[:, :2] = np.where(label, ord("1"), ord("0")), ord("\t"), True

    d, dk = (
        text[:, 2 : 2 + dense_cols].reshape(n, 13, field),
        keep[:, 2 : 2 + dense_cols].reshape(n, 13, field),
    )
    magnitude = np.abs(dense)
    num_digits = 1 + sum((magnitude >= 10**k).astype(np.int64) for k in range(1, _DENSE_WIDTH))
    for k in range(_DENSE_WIDTH):  # k-th digit from the right sits in column field - 2 - k
        d[:, :, field - 2 - k] = _DIGITS[(magnitude // 10**k) % 10]
        dk[:, :, field - 2 - k] = (k < num_digits) & ~dense_empty
    sign_col = (field - 2 - num_digits)[..., None]
    np.put_along_axis(d, sign_col, ord("-"), axis=2)
    np.put_along_axis(dk, sign_col, ((dense < 0) & ~dense_empty)[..., None], axis=2)
    d[:, :, -1], dk[:, :, -1] = ord("\t"), True

    s, sk = text[:, 2 + dense_cols :].reshape(n, 26, 9), keep[:, 2 + dense_cols :].reshape(n, 26, 9)
    for k in range(8):
        s[:, :, 7 - k] = _HEX[((values >> np.uint64(4 * k)) & np.uint64(15)).astype(np.intp)]
    sk[:, :, :8] = ~sparse_empty[..., None]
    s[:, :, 8], sk[:, :, 8] = ord("\t"), True
    text[:, -1] = ord("\n")  # the last field's tab becomes the line end
    return text[keep].tobytes()


def generate(path: Path, rows: int, seed: int = 0, progress: bool = True) -> Path:
    """Write ``rows`` Criteo-format lines to ``path`` (written to a temporary name, then renamed)."""
    tmp = path.with_name(path.name + ".tmp")
    with (
        open(tmp, "wb") as f,
        tqdm(total=rows, unit="rows", desc=f"generate {path.name}", disable=not progress) as bar,
    ):
        for block, start in enumerate(range(0, rows, _BLOCK_ROWS)):
            n = min(_BLOCK_ROWS, rows - start)
            # per-block seed: same bytes at any block order
            f.write(_block(np.random.default_rng([seed, block]), n))
            bar.update(n)
    os.replace(tmp, path)
    return path


def _gzip_copy(path: Path, progress: bool) -> Path:
    target = path.with_name(path.name + ".gz")
    tmp = target.with_name(target.name + ".tmp")
    with (
        open(path, "rb") as src,
        gzip.open(tmp, "wb", compresslevel=6) as dst,
        tqdm(
            total=path.stat().st_size,
            unit="B",
            unit_scale=True,
            desc=f"gzip {path.name}",
            disable=not progress,
        ) as bar,
    ):
        for block in iter(lambda: src.read(1 << 24), b""):
            dst.write(block)
            bar.update(len(block))
    os.replace(tmp, target)
    return target


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _digest(out: Path) -> str:
    """sha256 over the dataset's data files (vocab/ included), to check every worker count wrote the same."""
    sha = hashlib.sha256()
    for path in sorted(out.rglob("*")):
        if path.is_file() and path.name != "meta.json":
            sha.update(str(path.relative_to(out)).encode() + path.read_bytes())
    return sha.hexdigest()


def _busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (Linux); 0 where unknown."""
    try:
        fields = [int(v) for v in open("/proc/stat").readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _children_cpu_s() -> float:
    # includes the workers, which the CLI waits for
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_preprocess(
    source: Path, out: Path, mode: str, workers: int, chunk_rows: int | None
) -> dict:
    """meta.json of one run, plus its "own_cpu_s" and the "other_cpu_s" the rest of the machine used meanwhile."""
    cmd = [
        sys.executable,
        "-m",
        "pipeline.criteo",
        "preprocess",
        str(source),
        "--out",
        str(out),
        "--overwrite",
        "--workers",
        str(workers),
        *MODES[mode],
    ]
    if chunk_rows is not None:
        cmd += ["--chunk-rows", str(chunk_rows)]
    busy, own = _busy_cpu_s(), _children_cpu_s()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    busy, own = _busy_cpu_s() - busy, _children_cpu_s() - own
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
    meta = json.loads((out / "meta.json").read_text())
    return {**meta, "own_cpu_s": round(own, 2), "other_cpu_s": round(max(busy - own, 0.0), 2)}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cores = os.cpu_count() or 1
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--workers",
        default=",".join(str(w) for w in range(1, cores + 1)),
        help="comma-separated worker counts (default 1..os.cpu_count())",
    )
    parser.add_argument(
        "--modes", default="hash,min-freq", help=f"comma-separated, of {list(MODES)}"
    )
    parser.add_argument("--gzip", action="store_true", help="also time a gzip copy of the input")
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="runs per point; the one least disturbed by other "
        "work is kept (the fastest among those within 0.2 CPU s of the least)",
    )
    parser.add_argument(
        "--chunk-rows", type=int, default=None, help="passed on (default: preprocess's own)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--dir",
        default=None,
        help="scratch directory; the generated input is kept there "
        "(default: a directory under the system temp dir)",
    )
    parser.add_argument(
        "--results", default=str(RESULTS), help="JSON lines file to append to ('' for none)"
    )
    parser.add_argument("--no-progress", action="store_true")
    return parser


def _inputs(args, scratch: Path, progress: bool) -> dict[str, Path]:
    """The generated TSV input (kept between runs), and its gzip copy with --gzip."""
    source = scratch / f"criteo_{args.rows}_seed{args.seed}.tsv"
    if not source.exists():
        generate(source, args.rows, args.seed, progress)
    inputs = {"plain": source}
    if args.gzip:
        inputs["gzip"] = source.with_name(source.name + ".gz")
        if not inputs["gzip"].exists():
            _gzip_copy(source, progress)
    return inputs


def _measure(
    args, points, inputs, scratch: Path, machine: dict, worker_counts: list[int], progress: bool
) -> list[dict]:
    """One result line per (mode, input, workers); every worker count must write the same bytes."""
    results, digests = [], {}
    for mode, kind, workers in tqdm(points, desc="runs", disable=not progress):
        out = scratch / f"out_{mode}_{kind}_w{workers}"
        runs = [
            run_preprocess(inputs[kind], out, mode, workers, args.chunk_rows)
            for _ in range(args.repeats)
        ]
        least = min(r["other_cpu_s"] for r in runs)
        meta = min((r for r in runs if r["other_cpu_s"] <= least + 0.2), key=lambda r: r["seconds"])
        digest = _digest(out)
        if digests.setdefault((mode, kind), digest) != digest:
            raise RuntimeError(
                f"{mode} {kind}: {workers} workers wrote different bytes than {worker_counts[0]}"
            )
        shutil.rmtree(out)
        results.append(
            {
                "bench": "preprocess",
                **machine,
                "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "rows": meta["num_rows"],
                "input": kind,
                "input_bytes": inputs[kind].stat().st_size,
                "mode": mode,
                "workers": workers,
                "chunk_rows": meta["options"]["chunk_rows"],
                "seconds": meta["seconds"],
                "rows_per_s": round(meta["num_rows"] / meta["seconds"]),
                "own_cpu_s": meta["own_cpu_s"],
                "other_cpu_s": meta["other_cpu_s"],
                "repeats": args.repeats,
                "all_seconds": [r["seconds"] for r in runs],
                "all_other_cpu_s": [r["other_cpu_s"] for r in runs],
            }
        )
    return results


def _print_table(results: list[dict], rows: int, machine: dict) -> None:
    """The results as a table; adds each line's speed-up over one worker."""
    print(
        f"\npreprocess, {rows:,} rows, on {machine['device']}, {machine['cores']} cores, commit {machine['commit']}"
    )
    header = (
        f"{'mode':<9} {'input':<6} {'workers':>7} {'seconds':>8} {'rows/s':>10} {'speed-up':>9} {'own CPU s':>10} "
        f"{'other CPU s':>12}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        one = next(
            (
                o
                for o in results
                if (o["mode"], o["input"], o["workers"]) == (r["mode"], r["input"], 1)
            ),
            None,
        )
        r["speedup_vs_1"] = round(r["rows_per_s"] / one["rows_per_s"], 3) if one else None
        speedup = f"{r['speedup_vs_1']:.2f}x" if one else "-"
        print(
            f"{r['mode']:<9} {r['input']:<6} {r['workers']:>7} {r['seconds']:>8.2f} {r['rows_per_s']:>10,} "
            f"{speedup:>9} {r['own_cpu_s']:>10.2f} {r['other_cpu_s']:>12.2f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    progress = not args.no_progress
    worker_counts = [int(w) for w in args.workers.split(",")]
    modes = args.modes.split(",")
    if unknown := set(modes) - set(MODES):
        parser.error(f"unknown modes {sorted(unknown)}")
    scratch = Path(args.dir or Path(tempfile.gettempdir()) / "recfuse_bench_preprocess")
    scratch.mkdir(parents=True, exist_ok=True)
    inputs = _inputs(args, scratch, progress)
    if (load := os.getloadavg()[0]) > 0.5:
        print(
            f"warning: load average {load:.2f}: the machine may not be idle; see 'other CPU s' per run",
            file=sys.stderr,
        )
    machine = {
        "device": f"cpu ({_cpu_name()}, {platform.machine()})",
        "cores": os.cpu_count() or 1,
        "commit": _git_commit(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    points = [(m, i, w) for m in modes for i in inputs for w in worker_counts]
    results = _measure(args, points, inputs, scratch, machine, worker_counts, progress)
    _print_table(results, args.rows, machine)
    if args.results:
        Path(args.results).parent.mkdir(parents=True, exist_ok=True)
        with open(args.results, "a") as f:
            for r in results:
                f.write(jsonio.dumps(r) + "\n")
        print(f"appended {len(results)} lines to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
