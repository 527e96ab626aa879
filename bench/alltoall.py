"""All-to-all bandwidth over message sizes, with nccl-tests definitions.

    python bench/alltoall.py                          # spawns --nproc ranks itself (2 on CPU, all GPUs on CUDA)
    torchrun --nproc_per_node=8 bench/alltoall.py     # or under torchrun (also multi-node)

size   = bytes in each rank's send buffer (all peers' slots, its own included), as nccl-tests' alltoall
algbw  = size / time
busbw  = algbw * (n - 1) / n   (the share of the buffer that actually crosses a link)
time   = mean over timed iterations after warm-up, device synchronized, the slowest rank's
Backend: nccl on CUDA, gloo on CPU. Rank 0 prints a table and appends one JSON line per size to
bench/results/alltoall.jsonl with the device, date, git commit and world size.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from training import jsonio  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "alltoall.jsonl"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--min-bytes", type=int, default=1 << 10, help="smallest send buffer per rank")
    p.add_argument("--max-bytes", type=int, default=16 << 20, help="largest send buffer per rank")
    p.add_argument("--factor", type=int, default=4, help="size multiplier between rows")
    p.add_argument("--warmup", type=int, default=5, help="untimed iterations per size")
    p.add_argument("--iters", type=int, default=20, help="timed iterations per size")
    p.add_argument(
        "--nproc",
        type=int,
        default=0,
        help="ranks to spawn when not under torchrun (0: GPUs, or 2 on CPU)",
    )
    p.add_argument("--backend", default="auto", choices=["auto", "nccl", "gloo"])
    p.add_argument("--out", default=str(RESULTS), help="JSON-lines file to append to ('' to skip)")
    return p.parse_args(argv)


def git_commit() -> str:
    try:
        repo = Path(__file__).resolve().parent.parent
        out = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu {platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def sizes(args) -> list[int]:
    out, size = [], args.min_bytes
    while size <= args.max_bytes:
        out.append(size)
        size *= args.factor
    return out


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_alltoall(
    size_bytes: int, world: int, device: torch.device, warmup: int, iters: int
) -> tuple[int, float]:
    """(bytes actually sent per rank, seconds per all_to_all_single) - the slowest rank's time."""
    count = max(world, size_bytes // 4 // world * world)  # float32 elements, equal slots per peer
    send = torch.ones(count, dtype=torch.float32, device=device)
    recv = torch.empty_like(send)
    for _ in range(warmup):
        dist.all_to_all_single(recv, send)
    synchronize(device)
    dist.barrier()
    start = time.perf_counter()
    for _ in range(iters):
        dist.all_to_all_single(recv, send)
    synchronize(device)
    elapsed = torch.tensor(
        [(time.perf_counter() - start) / iters], dtype=torch.float64, device=device
    )
    dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)  # a collective is as fast as its slowest rank
    return count * 4, elapsed.item()


def run(args) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    if dist.get_backend() == "nccl":
        device = torch.device(
            "cuda", int(os.environ.get("LOCAL_RANK", rank % torch.cuda.device_count()))
        )
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(1)  # gloo ranks share the host's cores
    header = {
        "bench": "alltoall",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "device": device_name(device),
        "backend": dist.get_backend(),
        "world_size": world,
        "host": socket.gethostname(),
    }
    rows = []
    # untimed: connection set-up
    time_alltoall(args.min_bytes, world, device, warmup=args.warmup, iters=1)
    for size in sizes(args):
        nbytes, seconds = time_alltoall(size, world, device, args.warmup, args.iters)
        algbw = nbytes / seconds
        rows.append(
            {
                **header,
                "bytes": nbytes,
                "time_us": seconds * 1e6,
                "algbw_GBps": algbw / 1e9,
                "busbw_GBps": algbw * (world - 1) / world / 1e9,
                "warmup": args.warmup,
                "iters": args.iters,
            }
        )
    if rank == 0:
        print(
            f"all_to_all_single  {header['device']}  backend={header['backend']}  world_size={world}",
            end="",
        )
        print(f"  commit={header['git_commit']}  warmup={args.warmup} iters={args.iters}")
        print(f"{'bytes':>12} {'time_us':>12} {'algbw_GB/s':>11} {'busbw_GB/s':>11}")
        for r in rows:
            print(
                f"{r['bytes']:>12} {r['time_us']:>12.1f} {r['algbw_GBps']:>11.3f} {r['busbw_GBps']:>11.3f}"
            )
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            with open(args.out, "a") as f:
                for r in rows:
                    f.write(jsonio.dumps(r) + "\n")
            print(f"appended {len(rows)} lines to {args.out}")


def _backend(choice: str) -> str:
    if choice != "auto":
        return choice
    return "nccl" if torch.cuda.is_available() else "gloo"


def _spawned_rank(rank: int, world: int, port: int, args) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    dist.init_process_group(_backend(args.backend), rank=rank, world_size=world)
    try:
        run(args)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> None:
    args = parse_args(argv)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # under torchrun
        dist.init_process_group(_backend(args.backend))
        try:
            run(args)
        finally:
            dist.destroy_process_group()
        return
    world = args.nproc or (torch.cuda.device_count() if torch.cuda.is_available() else 2)
    if world < 2:
        sys.exit("all-to-all needs at least 2 ranks (--nproc)")
    mp.spawn(_spawned_rank, args=(world, _free_port(), args), nprocs=world, join=True)


if __name__ == "__main__":
    main()
