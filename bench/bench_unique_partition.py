"""Microbenchmark: Triton unique + partition-by-owner (direct map and hash table) vs torch.unique + argsort.

Bytes counted (minimum the op must move): keys read (8N) + inverse written (8N) + unique keys
written (8U). The map / hash table traffic of the Triton kernels is overhead, not counted.

    python bench/bench_unique_partition.py                 # CPU: small, Triton interpreted
    python bench/bench_unique_partition.py --size dlrm     # GPU: MLPerf DLRM-DCNv2 global batch
"""

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bench._common import SIZES, Report, bench, make_batch, setup_interpreter  # noqa: E402

DEVICE = setup_interpreter()

import torch  # noqa: E402

from kernels.unique_partition import unique_partition_reference  # noqa: E402
from kernels.unique_partition_triton import unique_partition_triton  # noqa: E402


def table_owner(num_rows: list[int], world_size: int) -> torch.Tensor:
    # the biggest tables row-wise (-1), the rest whole tables dealt round-robin
    return torch.tensor(
        [-1 if r >= 1_000_000 else t % world_size for t, r in enumerate(num_rows)],
        dtype=torch.int64,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size", choices=list(SIZES), default="small" if DEVICE.type == "cpu" else "dlrm"
    )
    parser.add_argument("--world-size", type=int, default=8)
    parser.add_argument("--reps", type=int, default=5, help="CPU repetitions")
    args = parser.parse_args()

    batch = make_batch(args.size, DEVICE)
    keys, offsets = batch["keys"], batch["table_offsets"]
    owners = table_owner(SIZES[args.size]["rows"], args.world_size).to(DEVICE)
    num_unique = unique_partition_reference(keys, offsets, owners, args.world_size)[0].numel()
    n = keys.numel()
    num_bytes = 8 * n + 8 * n + 8 * num_unique

    report = Report("unique_partition", args.size, DEVICE)
    suffix = " (interpreter)" if DEVICE.type == "cpu" else ""
    key_space = sum(SIZES[args.size]["rows"])
    report.add(
        f"triton direct map{suffix}",
        bench(
            lambda: unique_partition_triton(
                keys, offsets, owners, args.world_size, key_space=key_space
            ),
            DEVICE,
            args.reps,
        ),
        num_bytes,
    )
    report.add(
        f"triton hash table{suffix}",
        bench(
            lambda: unique_partition_triton(keys, offsets, owners, args.world_size),
            DEVICE,
            args.reps,
        ),
        num_bytes,
    )
    report.add(
        "torch.unique + argsort by owner",
        bench(
            lambda: unique_partition_reference(keys, offsets, owners, args.world_size),
            DEVICE,
            args.reps,
        ),
        num_bytes,
    )
    report.finish(f"| N={n} U={num_unique} W={args.world_size}")


if __name__ == "__main__":
    main()
