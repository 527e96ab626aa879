"""Microbenchmark: unique + partition-by-owner of one rank's keys (the public kernels.unique_partition, direct
map and hash table) vs torch.unique + argsort.

Workload (bench/shapes.py): one rank's batch of the size (--size dlrm: 8192 samples of MLPerf DLRM-DCNv2,
1.75M keys), Zipf ids over the full tables (--zipf), fused into one key space (204M keys); tables of 1M
rows or more row-wise, the rest whole tables dealt round-robin over --world-size ranks.

    python bench/bench_unique_partition.py                 # CPU: small, Triton interpreted
    python bench/bench_unique_partition.py --size dlrm     # GPU: one rank's MLPerf step over 8 ranks
"""

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bench._common import Report, bench, kernel_label, setup_interpreter  # noqa: E402
from bench.shapes import SIZES, ZIPF_EXPONENT, describe, make_batch  # noqa: E402

DEVICE = setup_interpreter()

import torch  # noqa: E402

from kernels import unique_partition  # noqa: E402
from kernels.unique_partition import unique_partition_reference  # noqa: E402

BYTE_MODELS = {
    "unique_partition": "keys read 8N + inverse written 8N + unique keys written 8U + counts 8W; the "
    "kernels' map or hash-table traffic is overhead, not counted"
}


def table_owner(num_rows: list[int], world_size: int) -> torch.Tensor:
    # the biggest tables row-wise (-1), the rest whole tables dealt round-robin
    return torch.tensor(
        [-1 if r >= 1_000_000 else t % world_size for t, r in enumerate(num_rows)],
        dtype=torch.int64,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size", choices=list(SIZES), default="small" if DEVICE.type == "cpu" else "dlrm"
    )
    parser.add_argument("--world-size", type=int, default=8)
    parser.add_argument("--zipf", type=float, default=ZIPF_EXPONENT, help="Zipf exponent of ids")
    parser.add_argument("--reps", type=int, default=5, help="CPU repetitions")
    return parser


def main():
    args = _parser().parse_args()
    batch = make_batch(args.size, DEVICE, exponent=args.zipf)
    keys, offsets, w = batch["keys"], batch["table_offsets"], args.world_size
    owners = table_owner(SIZES[args.size]["rows"], w).to(DEVICE)
    num_unique = unique_partition_reference(keys, offsets, owners, w)[0].numel()
    n = keys.numel()
    num_bytes = 8 * n + 8 * n + 8 * num_unique + 8 * w

    report = Report("unique_partition", args.size, DEVICE, BYTE_MODELS)
    label = kernel_label(keys)
    key_space = int(offsets[-1])
    for impl, fn in (
        (
            f"unique_partition: {label}, direct map",
            lambda: unique_partition(keys, offsets, owners, w, key_space=key_space),
        ),
        (
            f"unique_partition: {label}, hash table",
            lambda: unique_partition(keys, offsets, owners, w),
        ),
        (
            "unique_partition: torch.unique + argsort by owner",
            lambda: unique_partition_reference(keys, offsets, owners, w),
        ),
    ):
        report.add(impl, bench(fn, DEVICE, args.reps), num_bytes)
    report.finish(f"{describe(batch, args.size, shard=False)}, U={num_unique:,} W={w}")


if __name__ == "__main__":
    main()
