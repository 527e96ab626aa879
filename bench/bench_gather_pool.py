"""Microbenchmark: owner lookup, fused gather_pool and pool_backward vs torch baselines, on random rows.

Workload (bench/shapes.py): one rank's batch of the size, ids Zipf-distributed per table (the synthetic
data's law, --zipf), read from a table sized like one owner's shard (--size dlrm: MLPerf DLRM-DCNv2 over
8 GPUs, 25.5M rows x 128 fp32 = 13.1 GB; the hot rows scattered over it unless --ranked). Never arange rows:
reading rows 0..U-1 in order is a sequential copy, not a gather.

- lookup: the owner reads the batch's U distinct rows (sorted, as a dedup yields them) from the shard.
- gather_pool: the single-rank forward: every one of the N values reads its row of the shard, pooled into
  [B, F, D] (sum and mean features alternate).
- pool_backward: the pooled gradient back to the U distinct rows (the W > 1 backward's first pass).

    python bench/bench_gather_pool.py                # CPU: small, Triton interpreted
    python bench/bench_gather_pool.py --size dlrm    # GPU: one rank's MLPerf step on one 13 GB shard
"""

import argparse
import pathlib
import sys
from types import SimpleNamespace

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bench._common import Report, bench, kernel_label, setup_interpreter  # noqa: E402
from bench.shapes import SIZES, ZIPF_EXPONENT, describe, make_batch  # noqa: E402

DEVICE = setup_interpreter()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from kernels import gather_pool, lookup, pool_backward  # noqa: E402
from kernels.gather_pool import bag_layout, gather_pool_reference, lookup_reference  # noqa: E402
from kernels.pool_backward import pool_backward_reference  # noqa: E402

BYTE_MODELS = {
    "lookup": "U row indices read 8U + U distinct rows read U*D*s + U rows written U*D*4 (float32 out)",
    "gather_pool": "N value rows read 8N + offsets 8(FB+1) + U distinct rows read U*D*s (at least once "
    "each; the note gives N*D*s, every use one read) + pooled written B*F*D*4",
    "pool_backward": "pooled gradient read B*F*D*4 + inverse 8N + offsets 8(FB+1) + U gradient rows "
    "written U*D*4",
}


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
    parser.add_argument("--zipf", type=float, default=ZIPF_EXPONENT, help="Zipf exponent of ids")
    parser.add_argument(
        "--ranked",
        action="store_true",
        help="hot rows first in memory (the synthetic data's layout) instead of scattered",
    )
    parser.add_argument("--reps", type=int, default=5, help="CPU repetitions")
    return parser


def _workload(args) -> SimpleNamespace:
    """One rank's batch over a shard-sized table on DEVICE: its value rows, distinct rows, a gradient."""
    batch = make_batch(args.size, DEVICE, exponent=args.zipf, shard=True, scatter=not args.ranked)
    value_rows, offsets = batch["keys"], batch["offsets"]
    batch_size, num_features, dim = batch["batch"], batch["num_features"], batch["dim"]
    table_rows = int(batch["table_offsets"][-1])
    # filled on the device: values do not matter, a 13 GB host tensor would
    weight = torch.empty(table_rows, dim, device=DEVICE).uniform_(-0.05, 0.05)
    unique_rows, inverse = torch.unique(value_rows, return_inverse=True)
    feature_mean = (torch.arange(num_features) % 2 == 1).to(DEVICE)
    bag_of_value, _, scale = bag_layout(offsets, batch_size, feature_mean)
    grad = torch.randn(batch_size, num_features, dim, device=DEVICE)
    return SimpleNamespace(
        batch=batch,
        weight=weight,
        value_rows=value_rows,
        offsets=offsets,
        batch_size=batch_size,
        num_features=num_features,
        dim=dim,
        unique_rows=unique_rows,
        inverse=inverse,
        num_unique=unique_rows.numel(),
        n=value_rows.numel(),
        num_bags=batch_size * num_features,
        feature_mean=feature_mean,
        per_sample_weights=scale[bag_of_value],
        grad=grad,
    )


def _measure_forward(report: Report, w: SimpleNamespace, reps: int) -> None:
    s, u = w.weight.element_size(), w.num_unique
    lookup_bytes = 8 * u + u * w.dim * s + u * w.dim * 4
    label = kernel_label(w.weight)
    report.add(
        f"lookup: {label}",
        bench(lambda: lookup(w.weight, w.unique_rows), DEVICE, reps),
        lookup_bytes,
    )
    report.add(
        "lookup: index_select",
        bench(lambda: lookup_reference(w.weight, w.unique_rows), DEVICE, reps),
        lookup_bytes,
    )
    bags = (w.value_rows, w.offsets, w.batch_size)
    fwd_bytes = 8 * w.n + 8 * (w.num_bags + 1) + u * w.dim * s + w.num_bags * w.dim * 4
    note = f"N*D*s = {w.n * w.dim * s / 1e6:.3f} MB"
    for impl, fn in (
        (f"gather_pool: {label}", lambda: gather_pool(w.weight, *bags, w.feature_mean)),
        (
            "gather_pool: index_select+index_add",
            lambda: gather_pool_reference(w.weight, *bags, w.feature_mean),
        ),
        (
            "gather_pool: F.embedding_bag",
            lambda: embedding_bag(w.weight, *bags, w.per_sample_weights),
        ),
    ):
        report.add(impl, bench(fn, DEVICE, reps), fwd_bytes, note)


def _measure_backward(report: Report, w: SimpleNamespace, reps: int) -> None:
    bwd_bytes = w.num_bags * w.dim * 4 + 8 * w.n + 8 * (w.num_bags + 1) + w.num_unique * w.dim * 4
    args = (w.grad, w.inverse, w.offsets, w.feature_mean, w.num_unique)
    report.add(
        f"pool_backward: {kernel_label(w.grad)}",
        bench(lambda: pool_backward(*args), DEVICE, reps),
        bwd_bytes,
    )
    report.add(
        "pool_backward: index_add",
        bench(lambda: pool_backward_reference(*args), DEVICE, reps),
        bwd_bytes,
    )


def main():
    args = _parser().parse_args()
    w = _workload(args)
    report = Report("gather_pool", args.size, DEVICE, BYTE_MODELS)
    _measure_forward(report, w, args.reps)
    _measure_backward(report, w, args.reps)
    report.finish(f"{describe(w.batch, args.size, shard=True)}, U={w.num_unique:,} distinct rows")


if __name__ == "__main__":
    main()
