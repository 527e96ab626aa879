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
from types import SimpleNamespace

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bench._common import SIZES, Report, bench, make_batch, setup_interpreter  # noqa: E402

DEVICE = setup_interpreter()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from kernels.gather_pool import bag_layout, gather_pool_reference, lookup_reference  # noqa: E402
from kernels.gather_pool_triton import gather_pool_triton, lookup_triton  # noqa: E402
from kernels.pool_backward import pool_backward_reference  # noqa: E402
from kernels.pool_backward_triton import pool_backward_triton  # noqa: E402

SUFFIX = " (interpreter)" if DEVICE.type == "cpu" else ""


def embedding_bag(rows, inverse, offsets, batch_size, per_sample_weights):
    # mean features become a sum with per-value weights 1/len, so one call serves mixed pooling
    pooled = F.embedding_bag(
        inverse, rows, offsets[:-1], mode="sum", per_sample_weights=per_sample_weights
    )
    return pooled.view(-1, batch_size, rows.shape[1]).transpose(0, 1).contiguous()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size", choices=list(SIZES), default="small" if DEVICE.type == "cpu" else "dlrm"
    )
    parser.add_argument("--reps", type=int, default=5, help="CPU repetitions")
    return parser


def _workload(size: str) -> SimpleNamespace:
    """The batch of a size on DEVICE: its unique rows, bags and a pooled gradient."""
    batch = make_batch(size, DEVICE)
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
    return SimpleNamespace(
        offsets=offsets,
        batch_size=batch_size,
        num_features=num_features,
        dim=dim,
        inverse=inverse,
        num_unique=num_unique,
        n=n,
        rows=rows,
        feature_mean=feature_mean,
        per_sample_weights=per_sample_weights,
        grad=grad,
        local_rows=local_rows,
        num_bags=batch_size * num_features,
    )


def _measure_forward(report: Report, w: SimpleNamespace, reps: int) -> None:
    lookup_bytes = 8 * w.num_unique + 2 * w.num_unique * w.dim * 4
    report.add(
        "lookup: triton" + SUFFIX,
        bench(lambda: lookup_triton(w.rows, w.local_rows), DEVICE, reps),
        lookup_bytes,
    )
    report.add(
        "lookup: index_select",
        bench(lambda: lookup_reference(w.rows, w.local_rows), DEVICE, reps),
        lookup_bytes,
    )
    bags = (w.inverse, w.offsets, w.batch_size)
    fwd_bytes = 8 * w.n + 8 * (w.num_bags + 1) + w.n * w.dim * 4 + w.num_bags * w.dim * 4
    report.add(
        "gather_pool: triton fused" + SUFFIX,
        bench(lambda: gather_pool_triton(w.rows, *bags, w.feature_mean), DEVICE, reps),
        fwd_bytes,
    )
    report.add(
        "gather_pool: index_select+index_add",
        bench(lambda: gather_pool_reference(w.rows, *bags, w.feature_mean), DEVICE, reps),
        fwd_bytes,
    )
    report.add(
        "gather_pool: F.embedding_bag",
        bench(lambda: embedding_bag(w.rows, *bags, w.per_sample_weights), DEVICE, reps),
        fwd_bytes,
        "weights precomputed",
    )


def _measure_backward(report: Report, w: SimpleNamespace, reps: int) -> None:
    bwd_bytes = w.num_bags * w.dim * 4 + 8 * w.n + 8 * (w.num_bags + 1) + w.num_unique * w.dim * 4
    args = (w.grad, w.inverse, w.offsets, w.feature_mean, w.num_unique)
    report.add(
        "pool_backward: triton atomics" + SUFFIX,
        bench(lambda: pool_backward_triton(*args), DEVICE, reps),
        bwd_bytes,
    )
    report.add(
        "pool_backward: index_add",
        bench(lambda: pool_backward_reference(*args), DEVICE, reps),
        bwd_bytes,
    )


def main():
    args = _parser().parse_args()
    w = _workload(args.size)
    report = Report("gather_pool", args.size, DEVICE)
    _measure_forward(report, w, args.reps)
    _measure_backward(report, w, args.reps)
    report.finish(f"| B={w.batch_size} F={w.num_features} D={w.dim} N={w.n} U={w.num_unique}")


if __name__ == "__main__":
    main()
