"""Benchmark: the host tier's fetch path (embedding.host_tier) against a plain host-to-device copy.

Workload: one table of R rows (dim D, row-wise Adagrad) on the host tier with a device cache of 2K
rows; every call resolves a batch of K distinct rows none of which is cached (a step whose rows all
miss: the worst case), so the call copies K rows with their optimizer state and statistics in.
Two modes: ``fetch`` (evaluation batches: evicted rows are clean, nothing goes back) and
``fetch+writeback`` (training batches: every evicted row is dirty and is written back first).

Reported per mode: rows/s, GB/s over PCIe (bytes host -> device + device -> host, from the tier's
counters, per second), and that as a % of the measured copy bandwidth: a pinned host buffer of the
same bytes copied to the device (``copy``; on a machine without a GPU the "device" is the CPU and
both are memcpy: the CPU numbers say nothing about PCIe and are labelled so).

    python bench/bench_host_tier.py                 # CPU, small
    python bench/bench_host_tier.py --size large    # GPU
"""

import argparse
import json
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from embedding import SparseOptimizer, Table, plan_sharding  # noqa: E402
from embedding.sharded import ShardedEmbeddingCollection  # noqa: E402

# (K rows a call, calls timed, dim)
SIZES = {"small": (2048, 8, 64), "medium": (16384, 8, 128), "large": (65536, 10, 128)}
RESULTS = pathlib.Path(__file__).parent / "results"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_bandwidth(num_bytes: int, device: torch.device, reps: int = 10) -> float:
    """Bytes/s of a pinned host buffer copied to the device (CPU: a memcpy between two buffers)."""
    src = torch.empty(num_bytes, dtype=torch.uint8, pin_memory=device.type == "cuda")
    dst = torch.empty(num_bytes, dtype=torch.uint8, device=device)
    dst.copy_(src, non_blocking=True)
    times = []
    for _ in range(reps):
        _sync(device)
        start = time.perf_counter()
        dst.copy_(src, non_blocking=True)
        _sync(device)
        times.append(time.perf_counter() - start)
    return num_bytes / statistics.median(times)


def tier_fetch(k: int, calls: int, dim: int, device: torch.device, training: bool) -> dict:
    """Median seconds per resolve of K missing rows, and the bytes each moved (tier counters)."""
    rows = k * (calls + 3)
    table = Table("t", rows, dim, "sum", ("t",), "table", cache_rows=2 * k)
    plan = plan_sharding([table], 1, optimizer="adagrad")
    emb = ShardedEmbeddingCollection([table], plan, SparseOptimizer("adagrad", 0.1), device=device)
    tier, order = emb.tier, torch.randperm(rows, generator=torch.Generator().manual_seed(0))
    batches = [
        (order[i * k : (i + 1) * k] + emb.layout.base[0]).to(device) for i in range(calls + 3)
    ]
    times, moved = [], []
    for i, batch in enumerate(batches):
        tier.take_counters()
        _sync(device)
        start = time.perf_counter()
        _, ticket = tier.resolve(batch, training)
        _sync(device)
        if i >= 3:  # the first calls fill the cache (nothing to evict yet)
            times.append(time.perf_counter() - start)
            c = tier.take_counters()
            moved.append(c["h2d_bytes"] + c["d2h_bytes"])
        tier.release(ticket)
    return {"seconds": statistics.median(times), "bytes": statistics.median(moved)}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=sorted(SIZES), default="small")
    p.add_argument(
        "--out", default="", help="jsonl to append to (default bench/results/host_tier_<dev>.jsonl)"
    )
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    k, calls, dim = SIZES[args.size]
    label = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (memcpy, not PCIe)"
    )
    rows = []
    for mode, training in (("fetch", False), ("fetch+writeback", True)):
        r = tier_fetch(k, calls, dim, device, training)
        copy = copy_bandwidth(int(r["bytes"]), device)
        gbps = r["bytes"] / r["seconds"] / 1e9
        rows.append(
            {
                "bench": "host_tier",
                "mode": mode,
                "device": label,
                "rows_per_call": k,
                "dim": dim,
                "bytes_per_call": int(r["bytes"]),
                "ms_per_call": r["seconds"] * 1e3,
                "rows_per_s": k / r["seconds"],
                "gbps": gbps,
                "copy_gbps": copy / 1e9,
                "pct_of_copy": 100.0 * gbps * 1e9 / copy,
            }
        )
    print(f"host tier fetch path, {label}: K={k} rows of dim {dim} a call, all missing")
    print(f"{'mode':<16} {'ms/call':>9} {'Mrows/s':>9} {'GB/s':>7} {'copy GB/s':>10} {'% copy':>7}")
    for r in rows:
        print(
            f"{r['mode']:<16} {r['ms_per_call']:9.2f} {r['rows_per_s'] / 1e6:9.2f} "
            f"{r['gbps']:7.2f} {r['copy_gbps']:10.2f} {r['pct_of_copy']:7.1f}"
        )
    out = pathlib.Path(args.out or RESULTS / f"host_tier_{device.type}.jsonl")
    with open(out, "a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return rows


if __name__ == "__main__":
    main()
