"""Shared pieces of the kernel microbenchmarks: timing, bandwidth, the implementation under test, result log.

Timing: on CUDA ``triton.testing.do_bench``: the first call (compilation, autotuning) and a warm-up are not
timed, the L2 cache is flushed before every repetition, the device is synchronized, and the median with the
20th/80th percentiles is kept. On CPU the Triton kernels only run under the interpreter, so CPU numbers exist
to keep the scripts alive, not to judge the kernels: one untimed call, then the median of a few
perf_counter repetitions.

Bandwidth: every benchmark states its byte model (the bytes the operation must read and write at least,
printed with the table and kept in each row) and reports GB/s, % of the device's spec peak (when known)
and % of the measured device-to-device copy bandwidth (copy_bandwidth), the practical ceiling.

Implementations: the Triton rows call the public functions of kernels/ (kernels/__init__.py), which run
Triton on CUDA tensors; on CPU setup_interpreter sets RECFUSE_FORCE_TRITON=1 so that they run Triton under
the interpreter. The baselines call the torch references (``X_reference``) or torch ops directly.
"""

import datetime
import os
import pathlib
import statistics
import subprocess
import time

import torch

from training import jsonio

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


def setup_interpreter() -> torch.device:
    """Pick the device; without CUDA route Triton to its interpreter (before kernels.*_triton import) and
    make the public kernels/ functions run Triton on CPU tensors (kernels/dispatch.py)."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("RECFUSE_FORCE_TRITON", "1")
    return torch.device("cpu")


def kernel_label(tensor: torch.Tensor) -> str:
    """What a public kernels/ function runs on this tensor: Triton (compiled or interpreted) or the
    torch reference (RECFUSE_DISABLE_TRITON=1, or no triton)."""
    from kernels.dispatch import use_triton

    if not use_triton(tensor):
        return "torch reference (public function)"
    return "triton (interpreter)" if tensor.device.type == "cpu" else "triton"


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
    """(median, p20, p80) milliseconds of fn(), its first call excluded."""
    if device.type == "cuda":
        import triton.testing

        # do_bench calls fn once untimed, flushes L2 before each rep and synchronizes around them
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


class Report:
    """Collects rows, prints a table with the byte models, appends the rows to bench/results/kernels.jsonl.

    ``byte_models`` maps each operation (the part of an impl name before ":") to the bytes it must move,
    in words; every row names its operation's model, so a GB/s figure always says what it counts."""

    def __init__(self, bench_name: str, size: str, device: torch.device, byte_models: dict):
        self.bench_name, self.size, self.device = bench_name, size, device
        self.byte_models = byte_models
        self.name = device_name(device)
        self.peak = peak_bytes_per_s(self.name)
        self.copy = copy_bandwidth(device)
        self.rows = []

    def add(self, impl: str, times_ms, num_bytes: int, note: str = ""):
        op = impl.split(":")[0]
        if op not in self.byte_models:
            raise KeyError(f"{impl!r}: no byte model for {op!r} (have {sorted(self.byte_models)})")
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
                "byte_model": self.byte_models[op],
                "gb_per_s": gbps,
                "pct_peak": None if self.peak is None else 100 * gbps * 1e9 / self.peak,
                "pct_copy": 100 * gbps * 1e9 / self.copy,
                "note": note,
            }
        )

    def finish(self, workload: str = ""):
        peak = "unknown" if self.peak is None else f"{self.peak / 1e9:.0f} GB/s"
        print(
            f"{self.bench_name} [{self.size}] on {self.name}: spec peak {peak}, "
            f"measured copy {self.copy / 1e9:.1f} GB/s (read + write)"
        )
        print(f"workload: {workload}")
        print("byte models (bytes the operation must move at least; GB/s = bytes / median time):")
        ops_of = {}
        for op, model in self.byte_models.items():
            ops_of.setdefault(model, []).append(op)
        for model, ops in ops_of.items():
            print(f"  {', '.join(ops)}: {model}")
        header = (
            f"{'impl':<52} {'median ms':>10} {'p20':>9} {'p80':>9} {'MB':>9} {'GB/s':>8} "
            f"{'%peak':>6} {'%copy':>6}"
        )
        print(header)
        print("-" * len(header))
        for r in self.rows:
            pct = "-" if r["pct_peak"] is None else f"{r['pct_peak']:.1f}"
            print(
                f"{r['impl']:<52} {r['ms_median']:>10.3f} {r['ms_p20']:>9.3f} {r['ms_p80']:>9.3f} "
                f"{r['bytes'] / 1e6:>9.3f} {r['gb_per_s']:>8.2f} {pct:>6} {r['pct_copy']:>6.1f}  {r['note']}"
            )
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a") as f:
            for r in self.rows:
                f.write(jsonio.dumps({**r, "workload": workload}) + "\n")
