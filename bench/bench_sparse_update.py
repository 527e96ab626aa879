"""Microbenchmark: the owner's sparse optimizer update, and the single-rank backward (pooling backward fused
with the update) vs pool_backward + sparse_update and vs torch.

Workload (bench/shapes.py): the storage is one owner's shard (--size dlrm: MLPerf DLRM-DCNv2 over 8 GPUs,
25.5M rows x 128 in --dtype); the owner receives one rank's batch worth of keys (Zipf ids, hot rows
scattered, duplicates across senders kept): K = N rows, U of them distinct.

    python bench/bench_sparse_update.py                       # CPU: small, Triton interpreted
    python bench/bench_sparse_update.py --size dlrm --dtype bf16
"""

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bench._common import Report, bench, kernel_label, setup_interpreter  # noqa: E402
from bench.shapes import SIZES, ZIPF_EXPONENT, describe, make_batch  # noqa: E402

DEVICE = setup_interpreter()

import torch  # noqa: E402

from kernels import pool_backward, pool_backward_update, sparse_update  # noqa: E402
from kernels.pool_backward_update import pool_backward_update_reference  # noqa: E402
from kernels.sparse_optimizer import SPARSE_OPTIMIZERS, SparseOptimizer  # noqa: E402
from kernels.sparse_update import sparse_update_reference  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
BYTE_MODELS = {
    **{
        opt: "rows read 8K + gradients read K*D*4 + U distinct weight rows read and written 2*U*D*s + "
        "their optimizer state read and written (adagrad 2*4U, adam 2*(2*4UD + 8U)); dedup scratch not "
        "counted"
        for opt in SPARSE_OPTIMIZERS
    },
    **{
        f"W=1 backward {opt}": "value rows read 8N + offsets 8(FB+1) + pooled gradient read B*F*D*4 + "
        "U weight rows and their state read and written (as the update) + lookup count and last step "
        "read and written 32U"
        for opt in SPARSE_OPTIMIZERS
    },
}


def state_bytes(optimizer: str, num_unique: int, dim: int) -> int:
    if optimizer == "adagrad":
        return 2 * num_unique * 4
    if optimizer == "adam":
        return 2 * (2 * num_unique * dim * 4 + num_unique * 8)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size", choices=list(SIZES), default="small" if DEVICE.type == "cpu" else "dlrm"
    )
    parser.add_argument(
        "--dtype", choices=list(DTYPES), default="fp32", help="weight storage dtype"
    )
    parser.add_argument("--optimizer", choices=[*SPARSE_OPTIMIZERS, "all"], default="all")
    parser.add_argument("--zipf", type=float, default=ZIPF_EXPONENT, help="Zipf exponent of ids")
    parser.add_argument("--reps", type=int, default=5, help="CPU repetitions")
    return parser


def _timed(fn, optimizer: str, weight, reps: int):
    """Times fn(state, opt) with a fresh state, freed on return (adam's is twice a 13 GB shard)."""
    num_rows, dim = weight.shape
    state = SparseOptimizer(optimizer).init_state(num_rows, dim, DEVICE)
    opt = SparseOptimizer(optimizer, 0.01)
    return bench(lambda: fn(state, opt), DEVICE, reps)


def _measure_update(report: Report, weight, rows, grads, num_unique: int, optimizers, reps: int):
    """The owner's update of the received rows: the public function vs torch."""
    dim = weight.shape[1]
    for optimizer in optimizers:
        num_bytes = (
            8 * rows.numel()
            + rows.numel() * dim * 4
            + 2 * num_unique * dim * weight.element_size()
            + state_bytes(optimizer, num_unique, dim)
        )
        for impl, fn in (
            (f"{optimizer}: {kernel_label(weight)}", sparse_update),
            (f"{optimizer}: torch on touched rows", sparse_update_reference),
        ):
            timed = _timed(
                lambda st, opt, fn=fn: fn(weight, rows, grads, st, opt), optimizer, weight, reps
            )
            report.add(impl, timed, num_bytes)


def _measure_backward(report: Report, batch, weight, num_unique: int, optimizers, reps):
    """Single rank: the batch's values read rows of one local storage; backward = pooling backward
    + update, fused or in two passes."""
    num_rows, dim = weight.shape
    rows, batch_size, num_features = batch["keys"], batch["batch"], batch["num_features"]
    offsets = batch["offsets"]
    grad_pooled = 1e-3 * torch.randn(batch_size, num_features, dim, device=DEVICE)
    mean = (torch.arange(num_features) % 2 == 1).to(DEVICE)
    # the two-pass path's dedup, not timed
    unique_rows, inverse = torch.unique(rows, return_inverse=True)
    counters = [torch.zeros(num_rows, dtype=torch.int64, device=DEVICE) for _ in range(2)]

    def two_pass(state, opt):
        grad_unique = pool_backward(grad_pooled, inverse, offsets, mean, num_unique)
        sparse_update(weight, unique_rows, grad_unique, state, opt, rows_unique=True)

    def fused(update):
        return lambda st, opt: update(
            weight, st, *counters, 1, rows, offsets, grad_pooled, mean, opt
        )

    label = kernel_label(weight)
    for optimizer in optimizers:
        num_bytes = (
            8 * rows.numel()
            + 8 * offsets.numel()
            + grad_pooled.numel() * 4
            + 2 * num_unique * dim * weight.element_size()
            + state_bytes(optimizer, num_unique, dim)
            + 32 * num_unique
        )
        for impl, fn in (
            (f"W=1 backward {optimizer}: fused, {label}", fused(pool_backward_update)),
            (f"W=1 backward {optimizer}: pool_backward + sparse_update, {label}", two_pass),
            (f"W=1 backward {optimizer}: torch", fused(pool_backward_update_reference)),
        ):
            report.add(impl, _timed(fn, optimizer, weight, reps), num_bytes)


def main():
    args = _parser().parse_args()
    batch = make_batch(args.size, DEVICE, exponent=args.zipf, shard=True)
    dim, num_rows = batch["dim"], int(batch["table_offsets"][-1])
    # the owner receives every key of the batch as local rows (duplicates across senders kept)
    rows = batch["keys"]
    grads = 1e-3 * torch.randn(rows.numel(), dim, device=DEVICE)
    num_unique = torch.unique(rows).numel()
    weight = torch.empty(num_rows, dim, dtype=DTYPES[args.dtype], device=DEVICE).uniform_(
        -0.05, 0.05
    )

    report = Report("sparse_update", args.size, DEVICE, BYTE_MODELS)
    optimizers = SPARSE_OPTIMIZERS if args.optimizer == "all" else (args.optimizer,)
    _measure_update(report, weight, rows, grads, num_unique, optimizers, args.reps)
    _measure_backward(report, batch, weight, num_unique, optimizers, args.reps)
    report.finish(
        f"{describe(batch, args.size, shard=True)}, storage {args.dtype}, K={rows.numel():,} "
        f"U={num_unique:,}"
    )


if __name__ == "__main__":
    main()
