"""Shared pieces of the kernel microbenchmarks: timing, bandwidth, workload shapes, result log.

Timing: on CUDA ``triton.testing.do_bench`` (warm-up excluded, quantiles 0.5/0.2/0.8). On CPU
the Triton kernels only run under the interpreter, so CPU numbers exist to keep the scripts
alive, not to judge the kernels: a few perf_counter repetitions after one warm-up call.

Bandwidth: every benchmark counts the bytes the operation must move at minimum (documented
per script) and reports GB/s, % of the device's spec peak (when known) and % of a measured
device-to-device copy, the practical ceiling.
"""

import datetime
import json
import os
import pathlib
import statistics
import subprocess
import time

import torch

# where Report appends its rows; bench/gpu_check.py points it into its own result directory
RESULTS = pathlib.Path(
    os.environ.get("RECFUSE_BENCH_RESULTS")
    or pathlib.Path(__file__).parent / "results" / "kernels.jsonl"
)

# spec HBM bandwidth, bytes/s, by device-name substring (first match wins)
PEAK_BYTES_PER_S = (
    ("H200", 4.8e12),
    ("H100 80GB HBM3", 3.35e12),  # H100 SXM
    ("H100 SXM", 3.35e12),
    ("A100", 2.0e12),
)

# MLPerf DLRM-DCNv2 (Criteo 1TB, max_ind_range 40M): rows and multi-hot size per table
DLRM_ROWS = [
    40000000,
    39060,
    17295,
    7424,
    20265,
    3,
    7122,
    1543,
    63,
    40000000,
    3067956,
    405282,
    10,
    2209,
    11938,
    155,
    4,
    976,
    14,
    40000000,
    40000000,
    40000000,
    590152,
    12973,
    108,
    36,
]
DLRM_HOT = [3, 2, 1, 2, 6, 1, 1, 1, 1, 7, 3, 8, 1, 6, 9, 5, 1, 1, 1, 12, 100, 27, 10, 3, 1, 1]

SIZES = {
    # CPU default: small enough for the Triton interpreter
    "small": {"batch": 32, "rows": [1000, 50, 20000, 7], "hot": [1, 3, 2, 1], "dim": 16},
    "medium": {"batch": 4096, "rows": DLRM_ROWS, "hot": DLRM_HOT, "dim": 128},
    "dlrm": {"batch": 65536, "rows": DLRM_ROWS, "hot": DLRM_HOT, "dim": 128},
}


def setup_interpreter() -> torch.device:
    """Pick the device; without CUDA route Triton to its interpreter (before kernels.*_triton import)."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    os.environ.setdefault("TRITON_INTERPRET", "1")
    return torch.device("cpu")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def peak_bytes_per_s(name: str):
    for key, peak in PEAK_BYTES_PER_S:
        if key in name:
            return peak
    return None


def bench(fn, device: torch.device, cpu_reps: int = 5):
    """(median, p20, p80) milliseconds of fn()."""
    if device.type == "cuda":
        import triton.testing

        return tuple(triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8]))
    fn()  # warm-up: first-call costs (allocations, interpreter setup) are not the steady state
    times = []
    for _ in range(cpu_reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    if len(times) == 1:
        return times[0], times[0], times[0]
    q = statistics.quantiles(times, n=10, method="inclusive")
    return statistics.median(times), q[1], q[7]


def copy_bandwidth(device: torch.device) -> float:
    """Measured bytes/s of a large same-device copy (read + write counted)."""
    # large enough to defeat the last-level cache on both
    numel = (256 << 20) // 4 if device.type == "cuda" else (128 << 20) // 4
    # filled, not empty: untouched CPU pages all map to the one zero page and read from cache
    src = torch.ones(numel, dtype=torch.float32, device=device)
    dst = torch.zeros_like(src)
    ms = bench(lambda: dst.copy_(src), device)[0]
    return 2 * src.numel() * 4 / (ms * 1e-3)


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=pathlib.Path(__file__).parent,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def make_batch(size: str, device: torch.device, seed: int = 0):
    """Multi-hot batch in the KeyedJagged layout: fused keys [N], offsets [F*B+1], table offsets/owners.

    Ids are skewed (u^3 of a uniform u) so that hot rows repeat, as with real power-law ids.
    """
    spec = SIZES[size]
    gen = torch.Generator().manual_seed(seed)
    batch, rows, hot = spec["batch"], spec["rows"], spec["hot"]
    table_offsets = torch.tensor([0, *torch.tensor(rows).cumsum(0).tolist()], dtype=torch.int64)
    lengths, values = [], []
    for t, (num_rows, h) in enumerate(zip(rows, hot, strict=True)):
        # bag lengths vary in [0, 2h]: empty bags and longer ones, mean h
        length = torch.randint(0, 2 * h + 1, (batch,), generator=gen)
        n = int(length.sum())
        ids = (torch.rand(n, generator=gen) ** 3 * num_rows).long().clamp(max=num_rows - 1)
        lengths.append(length)
        values.append(ids + table_offsets[t])
    lengths = torch.cat(lengths)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    return {
        "keys": torch.cat(values).to(device),
        "offsets": offsets.to(device),
        "table_offsets": table_offsets.to(device),
        "batch": batch,
        "num_features": len(rows),
        "dim": spec["dim"],
    }


class Report:
    """Collects rows, prints a table, appends them to bench/results/kernels.jsonl."""

    def __init__(self, bench_name: str, size: str, device: torch.device):
        self.bench_name, self.size, self.device = bench_name, size, device
        self.name = device_name(device)
        self.peak = peak_bytes_per_s(self.name)
        self.copy = copy_bandwidth(device)
        self.rows = []

    def add(self, impl: str, times_ms, num_bytes: int, note: str = ""):
        median, p20, p80 = times_ms
        gbps = num_bytes / (median * 1e-3) / 1e9
        self.rows.append(
            {
                "bench": self.bench_name,
                "impl": impl,
                "size": self.size,
                "device": self.name,
                "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "commit": git_commit(),
                "ms_median": median,
                "ms_p20": p20,
                "ms_p80": p80,
                "bytes": num_bytes,
                "gb_per_s": gbps,
                "pct_peak": None if self.peak is None else 100 * gbps * 1e9 / self.peak,
                "pct_copy": 100 * gbps * 1e9 / self.copy,
                "note": note,
            }
        )

    def finish(self, extra: str = ""):
        peak = "unknown" if self.peak is None else f"{self.peak / 1e9:.0f} GB/s"
        print(
            f"{self.bench_name} [{self.size}] on {self.name}: spec peak {peak}, "
            f"measured copy {self.copy / 1e9:.1f} GB/s {extra}"
        )
        header = f"{'impl':<44} {'median ms':>10} {'p20':>9} {'p80':>9} {'MB':>9} {'GB/s':>8} {'%peak':>6} {'%copy':>6}"
        print(header)
        print("-" * len(header))
        for r in self.rows:
            pct = "-" if r["pct_peak"] is None else f"{r['pct_peak']:.1f}"
            print(
                f"{r['impl']:<44} {r['ms_median']:>10.3f} {r['ms_p20']:>9.3f} {r['ms_p80']:>9.3f} "
                f"{r['bytes'] / 1e6:>9.3f} {r['gb_per_s']:>8.2f} {pct:>6} {r['pct_copy']:>6.1f}  {r['note']}"
            )
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a") as f:
            for r in self.rows:
                f.write(json.dumps(r) + "\n")
