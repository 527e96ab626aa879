"""Project samples/s from one measured run to W GPUs on a node and across nodes (weak scaling).

    python bench/scaling.py                            # the built-in example step (not a measurement)
    python bench/scaling.py --measured runs/x/summary.json --alltoall-jsonl bench/results/alltoall.jsonl

Model of one step (per-GPU batch fixed, so every local stage keeps its measured time), over
train.py's stages (training.stages.STAGES, the summary.json "stage_ms" keys):
  step = local + alltoall + exposed allreduce
  local      = every stage but h2d (a side-stream copy, overlapped on GPU)
  alltoall   = exchange_bytes_per_rank * (n-1)/n / alltoall_busbw      (nccl-tests busbw definition)
  allreduce  = 2(n-1)/n * allreduce_bytes / allreduce_busbw           (ring all-reduce)
  exposed allreduce = max(dense_bwd, allreduce) - dense_bwd with overlap (DDP all-reduces buckets
                      during the dense backward), allreduce without
  samples/s  = n * local_batch / step
The measured stage times must exclude communication, i.e. come from a 1-GPU run: there the
exchange stages (input_dist, output_dist, grad_dist) hold only their local work (dedup, pooling
and its backward, merging) and dense_bwd no all-reduce; the exchanges are added back from bytes
and bandwidth. From a W > 1 run they would be counted twice.

Across nodes (G GPUs per node, one NIC of inter_node_bw per GPU): of each rank's all-to-all buffer,
(G-1)/W stays on the node and (W-G)/W crosses the network, both at once, so the slower part sets the
time; a ring all-reduce over all W ranks runs at its slowest link, min(intra busbw, NIC). NCCL's
tree/NVLS algorithms can beat the ring, so the all-reduce projection is conservative.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from training.stages import EXCHANGE_STAGES, OVERLAPPED_STAGES, STAGES  # noqa: E402

# a step's exchange is this many all-to-alls (ids, rows, gradients): a measured busbw is read at 1/3 of its bytes
ALLTOALLS_PER_STEP = 3

# An illustrative DCN-v2 step on one GPU (NOT a measurement): replace it with --measured.
EXAMPLE = {
    "stage_ms": {
        "data_wait": 0.5,
        "h2d": 0.5,
        "input_dist": 2.0,
        "lookup": 4.0,
        "output_dist": 3.0,
        "dense_fwd": 7.0,
        "dense_bwd": 13.0,
        "grad_dist": 2.0,
        "sparse_update": 2.0,
        "dense_optimizer": 2.0,
    },
    # local batch 8192, 26 features x 128 dims fp32 pooled rows out and gradients back, plus int64 ids
    "exchange_bytes_per_rank": 2 * 8192 * 26 * 128 * 4 + 8192 * 26 * 8,
    "allreduce_bytes": 16_044_545 * 4,  # MLPerf DCN-v2 dense parameters x fp32
    "local_batch": 8192,
}


def alltoall_ms(exchange_bytes_per_rank: float, world_size: int, busbw: float) -> float:
    """Time of all-to-alls moving that many send-buffer bytes per rank, from nccl-tests' busbw."""
    if world_size <= 1:
        return 0.0
    return exchange_bytes_per_rank * (world_size - 1) / world_size / busbw * 1e3


def allreduce_ms(allreduce_bytes: float, world_size: int, busbw: float) -> float:
    """Ring all-reduce time: each rank sends and receives 2(n-1)/n of the buffer."""
    if world_size <= 1:
        return 0.0
    return 2.0 * (world_size - 1) / world_size * allreduce_bytes / busbw * 1e3


def project(
    stage_ms: dict,
    exchange_bytes_per_rank: float,
    allreduce_bytes: float,
    local_batch: int,
    world_size: int,
    alltoall_busbw: float,
    allreduce_busbw: float,
    overlap: bool,
) -> dict:
    """Projected step for ``world_size`` GPUs at a fixed per-GPU batch. Bandwidths in bytes/s.

    Returns step_ms, samples_per_s (global), samples_per_s_per_gpu, scaling_efficiency (per-GPU
    throughput relative to the same step with no communication, i.e. W = 1), and the pieces."""
    missing = [s for s in STAGES if s not in stage_ms]
    if missing:
        raise ValueError(f"stage_ms lacks {missing} (expected {STAGES})")
    a2a = alltoall_ms(exchange_bytes_per_rank, world_size, alltoall_busbw)
    ar = allreduce_ms(allreduce_bytes, world_size, allreduce_busbw)
    dense_bwd = stage_ms["dense_bwd"]
    exposed_ar = max(dense_bwd, ar) - dense_bwd if overlap else ar
    local = sum(stage_ms[s] for s in STAGES if s not in OVERLAPPED_STAGES)
    step = local + exposed_ar + a2a
    return {
        "world_size": world_size,
        "local_batch": local_batch,
        "global_batch": local_batch * world_size,
        "alltoall_ms": a2a,
        "allreduce_ms": ar,
        "exposed_allreduce_ms": exposed_ar,
        # the exchange stages' projected time: their measured local work plus the all-to-alls
        "exchange_ms": sum(stage_ms[s] for s in EXCHANGE_STAGES) + a2a,
        "step_ms": step,
        "samples_per_s": world_size * local_batch / step * 1e3,
        "samples_per_s_per_gpu": local_batch / step * 1e3,
        "scaling_efficiency": local / step,
    }


def cross_node_busbw(
    gpus_per_node: int,
    nodes: int,
    intra_alltoall_busbw: float,
    intra_allreduce_busbw: float,
    inter_node_bw: float,
) -> tuple[float, float]:
    """Effective (all-to-all busbw, all-reduce busbw) for ``nodes`` x ``gpus_per_node`` GPUs, bytes/s.
    ``inter_node_bw`` is each GPU's own network bandwidth (400 Gb/s NIC = 50e9 B/s)."""
    world = gpus_per_node * nodes
    if nodes <= 1:
        return intra_alltoall_busbw, intra_allreduce_busbw
    # share of the send buffer going to other GPUs of the node
    on_node = (gpus_per_node - 1) / world
    off_node = (world - gpus_per_node) / world
    seconds_per_byte = max(on_node / intra_alltoall_busbw, off_node / inter_node_bw)
    alltoall = (world - 1) / world / seconds_per_byte
    return alltoall, min(intra_allreduce_busbw, inter_node_bw)


def busbw_from_jsonl(path: str, nbytes: float) -> float:
    """busbw (bytes/s) of the newest bench/alltoall.py run at the size nearest ``nbytes``."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"{path} has no results")
    newest = max((r["date"], r["git_commit"], r["world_size"]) for r in rows)
    run = [r for r in rows if (r["date"], r["git_commit"], r["world_size"]) == newest]
    nearest = min(run, key=lambda r: abs(r["bytes"] - nbytes))
    return nearest["busbw_GBps"] * 1e9


def load_measured(path: str) -> dict:
    """A JSON file with stage_ms, exchange_bytes_per_rank, allreduce_bytes, local_batch (summary.json keys)
    and optionally world_size."""
    data = json.loads(Path(path).read_text())
    keys = ("stage_ms", "exchange_bytes_per_rank", "allreduce_bytes", "local_batch")
    missing = [k for k in keys if k not in data]
    if missing:
        raise ValueError(f"{path} lacks {missing}")
    missing = [s for s in STAGES if s not in data["stage_ms"]]
    if missing:
        raise ValueError(f"{path}: stage_ms lacks {missing} (train.py's stages are {STAGES})")
    return {k: data[k] for k in (*keys, "world_size") if k in data}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--measured",
        default="",
        help="JSON with stage_ms, exchange_bytes_per_rank, allreduce_bytes, local_batch",
    )
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--max-nodes", type=int, default=8)
    p.add_argument(
        "--alltoall-busbw", type=float, default=300.0, help="intra-node all-to-all busbw, GB/s"
    )
    p.add_argument(
        "--alltoall-jsonl",
        default="",
        help="take the all-to-all busbw from bench/alltoall.py results instead",
    )
    p.add_argument(
        "--allreduce-busbw", type=float, default=400.0, help="intra-node all-reduce busbw, GB/s"
    )
    p.add_argument(
        "--inter-node-gbps", type=float, default=400.0, help="network bandwidth per GPU, Gb/s"
    )
    p.add_argument(
        "--no-overlap", action="store_true", help="all-reduce does not overlap dense backward"
    )
    p.add_argument(
        "--exchange-bytes",
        type=float,
        default=None,
        help="all-to-all bytes per rank per step (a W=1 run sends none off-rank: take them from a W>1 "
        "run's summary.json exchange_bytes_per_rank)",
    )
    return p.parse_args(argv)


def print_assumptions(args, measured: dict, exchange: float, links: tuple, overlap: bool) -> None:
    """What the projection takes as given: the measured step, bytes, bandwidths and overlap."""
    a2a_bw, ar_bw, inter_bw = links
    print("Assumptions:")
    print(
        f"  measured step: {args.measured or 'built-in EXAMPLE (illustrative, not a measurement)'}"
    )
    print(
        "  stage ms (communication excluded): "
        + ", ".join(f"{k}={measured['stage_ms'][k]:g}" for k in STAGES)
    )
    if measured.get("world_size", 1) > 1:
        print(
            f"  WARNING: measured at W={measured['world_size']}: its {', '.join(EXCHANGE_STAGES)} "
            "and dense_bwd already "
            "hold communication, which the projection adds again; measure at W=1"
        )
    print(
        f"  not counted (side stream, overlapped with the step on GPU): {', '.join(OVERLAPPED_STAGES)}"
    )
    print(f"  local batch {measured['local_batch']} per GPU, fixed (weak scaling)")
    if exchange == 0:
        print(
            "  WARNING: no all-to-all bytes (a W=1 run sends none off-rank); give --exchange-bytes"
        )
    print(f"  all-to-all bytes per rank per step {exchange / 1e6:.3f} MB", end="")
    print(f"; all-reduce bytes (dense params x 4) {measured['allreduce_bytes'] / 1e6:.3f} MB")
    print(
        f"  intra-node busbw: all-to-all {a2a_bw / 1e9:.1f} GB/s, all-reduce {ar_bw / 1e9:.1f} GB/s (ring)"
    )
    print(
        f"  inter-node: {args.inter_node_gbps:g} Gb/s = {inter_bw / 1e9:.1f} GB/s per GPU, "
        f"{args.gpus_per_node} GPUs per node"
    )
    print(
        f"  all-reduce {'overlaps' if overlap else 'does not overlap'} the dense backward; other stages are serial"
    )


def worlds(gpus_per_node: int, max_nodes: int) -> list[tuple[int, int]]:
    """(nodes, GPUs per node) of the table: 1, 2, 4, 8 GPUs on one node, then 2, 4, ... full nodes."""
    out = [(1, w) for w in (1, 2, 4, 8) if w <= gpus_per_node]
    nodes = 2
    while nodes <= max_nodes:
        out.append((nodes, gpus_per_node))
        nodes *= 2
    return out


def print_projections(args, measured: dict, exchange: float, links: tuple, overlap: bool) -> None:
    """The projected step, throughput and efficiency at each world size."""
    print(
        f"{'nodes':>5} {'GPUs':>5} {'a2a GB/s':>9} {'ar GB/s':>8} {'a2a ms':>8} {'ar ms':>8}",
        end="",
    )
    print(f" {'step ms':>8} {'samples/s':>12} {'eff':>6}")
    for n_nodes, per_node in worlds(args.gpus_per_node, args.max_nodes):
        a2a, ar = cross_node_busbw(per_node, n_nodes, *links)
        r = project(
            measured["stage_ms"],
            exchange,
            measured["allreduce_bytes"],
            measured["local_batch"],
            n_nodes * per_node,
            a2a,
            ar,
            overlap,
        )
        print(
            f"{n_nodes:>5} {r['world_size']:>5} {a2a / 1e9:>9.1f} {ar / 1e9:>8.1f} {r['alltoall_ms']:>8.2f} "
            f"{r['allreduce_ms']:>8.2f} {r['step_ms']:>8.2f} {r['samples_per_s']:>12.0f} "
            f"{r['scaling_efficiency']:>6.1%}"
        )


def main(argv=None) -> None:
    args = parse_args(argv)
    measured = load_measured(args.measured) if args.measured else EXAMPLE
    exchange = (
        measured["exchange_bytes_per_rank"] if args.exchange_bytes is None else args.exchange_bytes
    )
    a2a_bw = (
        busbw_from_jsonl(args.alltoall_jsonl, exchange / ALLTOALLS_PER_STEP)
        if args.alltoall_jsonl
        else args.alltoall_busbw * 1e9
    )
    # bytes/s: intra-node all-to-all and all-reduce busbw, each GPU's network bandwidth
    links = (a2a_bw, args.allreduce_busbw * 1e9, args.inter_node_gbps * 1e9 / 8)
    overlap = not args.no_overlap
    print_assumptions(args, measured, exchange, links, overlap)
    print()
    print_projections(args, measured, exchange, links, overlap)


if __name__ == "__main__":
    main()
