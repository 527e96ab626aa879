"""Microbenchmark: lookup, fused gather_pool and pool_backward vs torch baselines.

Bytes counted (FBGEMM's convention: every use of a row is one row read):
- lookup:        rows read 8U + weight rows read U*D*s + f32 out written U*D*4
- gather_pool:   inverse 8N + offsets 8(FB+1) + gathered rows N*D*4 + pooled written B*F*D*4
- pool_backward: pooled grad read B*F*D*4 + inverse 8N + offsets 8(FB+1) + grad_unique written U*D*4
  (the atomic kernel moves more: N*D*4 read-modify-writes; that shows up as a lower %)

    python bench/bench_gather_pool.py                # CPU: small, Triton interpreted
    python bench/bench_gather_pool.py --size dlrm    # GPU: 26 tables, D=128, batch 65536
"""

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bench._common import SIZES, Report, bench, make_batch, setup_interpreter  # noqa: E402

DEVICE = setup_interpreter()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from kernels.gather_pool import bag_layout, gather_pool_reference, lookup_reference  # noqa: E402
from kernels.gather_pool_triton import gather_pool_triton, lookup_triton  # noqa: E402
from kernels.pool_backward import pool_backward_reference  # noqa: E402
from kernels.pool_backward_triton import pool_backward_triton  # noqa: E402


def embedding_bag(rows, inverse, offsets, batch_size, per_sample_weights):
    # mean features become a sum with per-value weights 1/len, so one call serves mixed pooling
    pooled = F.embedding_bag(
        inverse, rows, offsets[:-1], mode="sum", per_sample_weights=per_sample_weights
    )
    return pooled.view(-1, batch_size, rows.shape[1]).transpose(0, 1).contiguous()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size", choices=list(SIZES), default="small" if DEVICE.type == "cpu" else "dlrm"
    )
    parser.add_argument("--reps", type=int, default=5, help="CPU repetitions")
    args = parser.parse_args()

    batch = make_batch(args.size, DEVICE)
    keys, offsets, batch_size, num_features, dim = (
        batch[k] for k in ("keys", "offsets", "batch", "num_features", "dim")
    )
    unique, inverse = torch.unique(keys, return_inverse=True)
    num_unique, n = unique.numel(), keys.numel()
    gen = torch.Generator().manual_seed(0)
    rows = torch.randn(num_unique, dim, generator=gen).to(DEVICE)
    # alternate sum / mean features
    feature_mean = (torch.arange(num_features) % 2 == 1).to(DEVICE)
    bag_of_value, _, scale = bag_layout(offsets, batch_size, feature_mean)
    per_sample_weights = scale[bag_of_value]
    grad = torch.randn(batch_size, num_features, dim, generator=gen).to(DEVICE)
    local_rows = torch.arange(num_unique, device=DEVICE)
    num_bags = batch_size * num_features
    suffix = " (interpreter)" if DEVICE.type == "cpu" else ""
    reps = args.reps

    report = Report("gather_pool", args.size, DEVICE)
    lookup_bytes = 8 * num_unique + 2 * num_unique * dim * 4
    report.add(
        "lookup: triton" + suffix,
        bench(lambda: lookup_triton(rows, local_rows), DEVICE, reps),
        lookup_bytes,
    )
    report.add(
        "lookup: index_select",
        bench(lambda: lookup_reference(rows, local_rows), DEVICE, reps),
        lookup_bytes,
    )

    fwd_bytes = 8 * n + 8 * (num_bags + 1) + n * dim * 4 + num_bags * dim * 4
    report.add(
        "gather_pool: triton fused" + suffix,
        bench(
            lambda: gather_pool_triton(rows, inverse, offsets, batch_size, feature_mean),
            DEVICE,
            reps,
        ),
        fwd_bytes,
    )
    report.add(
        "gather_pool: index_select+index_add",
        bench(
            lambda: gather_pool_reference(rows, inverse, offsets, batch_size, feature_mean),
            DEVICE,
            reps,
        ),
        fwd_bytes,
    )
    report.add(
        "gather_pool: F.embedding_bag",
        bench(
            lambda: embedding_bag(rows, inverse, offsets, batch_size, per_sample_weights),
            DEVICE,
            reps,
        ),
        fwd_bytes,
        "weights precomputed",
    )

    bwd_bytes = num_bags * dim * 4 + 8 * n + 8 * (num_bags + 1) + num_unique * dim * 4
    report.add(
        "pool_backward: triton atomics" + suffix,
        bench(
            lambda: pool_backward_triton(grad, inverse, offsets, feature_mean, num_unique),
            DEVICE,
            reps,
        ),
        bwd_bytes,
    )
    report.add(
        "pool_backward: index_add",
        bench(
            lambda: pool_backward_reference(grad, inverse, offsets, feature_mean, num_unique),
            DEVICE,
            reps,
        ),
        bwd_bytes,
    )
    report.finish(f"| B={batch_size} F={num_features} D={dim} N={n} U={num_unique}")


if __name__ == "__main__":
    main()
