"""Run a function on W real processes (gloo, CPU) and collect rank 0's return value."""

import os
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _entry(rank, world_size, init_file, fn, args, out_path):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        group = dist.new_group(backend="gloo")
        result = fn(rank, world_size, group, *args)
        if rank == 0:
            torch.save(result, out_path)
    finally:
        dist.destroy_process_group()


def run_distributed(fn, world_size: int, *args):
    """fn(rank, world_size, group, *args) on world_size spawned processes; returns rank 0's result.

    W=1 runs in this process with group=None (the single-process code path)."""
    if world_size == 1:
        return fn(0, 1, None, *args)
    with tempfile.TemporaryDirectory() as tmp:
        out_path = os.path.join(tmp, "result.pt")
        mp.spawn(
            _entry,
            args=(world_size, os.path.join(tmp, "init"), fn, args, out_path),
            nprocs=world_size,
            join=True,
        )
        return torch.load(out_path, weights_only=False)
