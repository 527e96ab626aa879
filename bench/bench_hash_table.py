"""Microbenchmark: find-or-insert of a step's distinct keys into a dynamic table's hash index.

Workload: a table of S slots filled to half with random 63-bit keys; a batch of K distinct keys of which a
fraction --hit is already held (a training step in steady state), the rest new. Each timed call inserts the new
keys and then tombstones them again (one K-element scatter, counted in the time), so every call sees the same
table.

Implementations:
- the public kernels.find_or_insert: Triton on CUDA (kernels/hash_table_triton.py), interpreted on CPU;
- its torch reference (vectorized probing rounds, one host sync per round);
- torch.unique baseline: a dynamic table kept as a sorted key array, find-or-insert as
  torch.unique(cat(table keys, batch keys), return_inverse=True) (a sort of S + K keys per step).

Bytes counted (the minimum a find-or-insert moves): keys read (8K), one slot read per key (8K), slots written
(8K), inserted flags (1K). keys/s = K / time.

    python bench/bench_hash_table.py                  # CPU: small, Triton interpreted
    python bench/bench_hash_table.py --size medium --no-triton   # CPU: the reference (the CPU path) at size
    python bench/bench_hash_table.py --size large     # GPU
"""

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bench._common import Report, bench, kernel_label, setup_interpreter  # noqa: E402

DEVICE = setup_interpreter()

import torch  # noqa: E402

from kernels import find_or_insert  # noqa: E402
from kernels.hash_table import EMPTY, TOMBSTONE, find_or_insert_reference  # noqa: E402

BYTE_MODELS = {
    "find_or_insert": "keys read 8K + one slot read per key 8K + slots written 8K + inserted flags 1K "
    "(the same count for every row, so GB/s compares them; keys/s in the note)"
}

# (slots, keys). "dlrm" (bench/gpu_check.py): one rank's index of a 40M-id table over 8 GPUs at half load (2^24
# slots), and 2^20 distinct ids in a step
SIZES = {
    "small": (1 << 12, 512),
    "medium": (1 << 22, 1 << 16),
    "large": (1 << 26, 1 << 20),
    "dlrm": (1 << 24, 1 << 20),
}


def workload(slots: int, num_keys: int, hit: float, device):
    gen = torch.Generator().manual_seed(0)
    held = torch.randint(0, 2**63 - 1, (slots // 2,), generator=gen, dtype=torch.int64).unique()
    table = torch.full((slots,), EMPTY, dtype=torch.int64, device=device)
    # Triton on a GPU (the reference would take minutes at the large sizes), the reference on CPU (the
    # interpreter would take minutes there)
    fill = find_or_insert if device.type == "cuda" else find_or_insert_reference
    fill(table, held.to(device))
    old = held[torch.randperm(held.numel(), generator=gen)[: int(num_keys * hit)]]
    new = torch.randint(0, 2**63 - 1, (num_keys - old.numel(),), generator=gen, dtype=torch.int64)
    keys = torch.cat([old, new])[torch.randperm(num_keys, generator=gen)]
    return table, keys.to(device), held.to(device)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size", choices=list(SIZES), default="small" if DEVICE.type == "cpu" else "large"
    )
    parser.add_argument(
        "--hit", type=float, default=0.9, help="fraction of the batch's keys already held"
    )
    parser.add_argument("--reps", type=int, default=5, help="CPU repetitions")
    parser.add_argument(
        "--no-triton",
        action="store_true",
        help="skip the Triton kernel (CPU: the interpreter is slow)",
    )
    args = parser.parse_args()
    slots, num_keys = SIZES[args.size]
    table, keys, held = workload(slots, num_keys, args.hit, DEVICE)

    def round_trip(find_or_insert):
        def call():
            found, inserted = find_or_insert(table, keys)
            # take the new keys out again
            table.scatter_(0, found, torch.where(inserted, TOMBSTONE, keys))

        return call

    sorted_held = torch.sort(held).values

    def unique_baseline():
        return torch.unique(torch.cat([sorted_held, keys]), sorted=True, return_inverse=True)

    report = Report("hash_table", args.size, DEVICE, BYTE_MODELS)
    num_bytes = 8 * num_keys * 3 + num_keys
    rows = (
        []
        if args.no_triton
        else [(f"find_or_insert: {kernel_label(keys)}", round_trip(find_or_insert))]
    )
    rows += [
        ("find_or_insert: torch reference (probing rounds)", round_trip(find_or_insert_reference)),
        ("find_or_insert: torch.unique(table keys + batch keys)", unique_baseline),
    ]
    for name, fn in rows:
        times = bench(fn, DEVICE, args.reps)
        report.add(name, times, num_bytes, note=f"{num_keys / (times[0] * 1e-3) / 1e6:.2f} Mkeys/s")
    report.finish(
        f"S={slots:,} slots, K={num_keys:,} distinct random 63-bit keys, {held.numel():,} held, "
        f"{args.hit:.0%} hits"
    )


if __name__ == "__main__":
    main()
