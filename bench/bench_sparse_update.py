"""Microbenchmark: fused sparse optimizer update vs the torch update on the touched rows, and the
single-rank backward (pooling backward fused with the update) vs pool_backward + sparse_update.

Bytes counted (minimum): rows 8K + grads K*D*4 + weight rows read and written 2*U*D*s, plus state
read and written: adagrad 2*U*4, adam 2*(2*U*D*4 + U*8). Dedup/merge scratch is not counted.
Single-rank backward (FBGEMM's convention, every use of a row is one read): value rows 8N + offsets
8(FB+1) + pooled-gradient rows N*D*4 + the same weight and state read-modify-write.

    python bench/bench_sparse_update.py                       # CPU: small, Triton interpreted
    python bench/bench_sparse_update.py --size dlrm --dtype bf16
"""

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bench._common import SIZES, Report, bench, make_batch, setup_interpreter  # noqa: E402

DEVICE = setup_interpreter()

import torch  # noqa: E402

from kernels.pool_backward_triton import pool_backward_triton  # noqa: E402
from kernels.pool_backward_update import pool_backward_update_reference  # noqa: E402
from kernels.pool_backward_update_triton import pool_backward_update_triton  # noqa: E402
from kernels.sparse_optimizer import SPARSE_OPTIMIZERS, SparseOptimizer  # noqa: E402
from kernels.sparse_update import sparse_update_reference  # noqa: E402
from kernels.sparse_update_triton import sparse_update_triton  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# local storage rows per size: an owner's shard, not the whole 40M-row tables
STORAGE_ROWS = {"small": 20_000, "medium": 1_000_000, "dlrm": 8_000_000}
SUFFIX = " (interpreter)" if DEVICE.type == "cpu" else ""


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
    parser.add_argument("--reps", type=int, default=5, help="CPU repetitions")
    return parser


def _measure_update(report: Report, weight, rows, grads, num_unique: int, optimizers, reps: int):
    """The owner's update of the touched rows: fused Triton vs torch."""
    num_rows, dim = weight.shape
    for optimizer in optimizers:
        num_bytes = (
            8 * rows.numel()
            + rows.numel() * dim * 4
            + 2 * num_unique * dim * weight.element_size()
            + state_bytes(optimizer, num_unique, dim)
        )
        for impl, fn in (
            (f"{optimizer}: triton fused{SUFFIX}", sparse_update_triton),
            (f"{optimizer}: torch on touched rows", sparse_update_reference),
        ):
            state = SparseOptimizer(optimizer).init_state(num_rows, dim, DEVICE)
            opt = SparseOptimizer(optimizer, 0.01)
            report.add(
                impl,
                bench(
                    lambda fn=fn, state=state, opt=opt: fn(weight, rows, grads, state, opt),
                    DEVICE,
                    reps,
                ),
                num_bytes,
            )


def _measure_backward(report: Report, batch, weight, rows, num_unique: int, gen, optimizers, reps):
    """Single rank: the batch's values read rows of one local storage; backward = pooling backward
    + update, fused or in two passes."""
    num_rows, dim = weight.shape
    batch_size, num_features, offsets = batch["batch"], batch["num_features"], batch["offsets"]
    grad_pooled = (1e-3 * torch.randn(batch_size, num_features, dim, generator=gen)).to(DEVICE)
    mean = (torch.arange(num_features) % 2 == 1).to(DEVICE)
    # the two-pass path's dedup, not timed
    unique_rows, inverse = torch.unique(rows, return_inverse=True)
    counters = [torch.zeros(num_rows, dtype=torch.int64, device=DEVICE) for _ in range(2)]

    def two_pass(state, opt):
        grad_unique = pool_backward_triton(grad_pooled, inverse, offsets, mean, num_unique)
        sparse_update_triton(weight, unique_rows, grad_unique, state, opt, rows_unique=True)

    for optimizer in optimizers:
        num_bytes = (
            8 * rows.numel()
            + 8 * (offsets.numel())
            + rows.numel() * dim * 4
            + 2 * num_unique * dim * weight.element_size()
            + state_bytes(optimizer, num_unique, dim)
        )
        for impl, fn in (
            (
                f"W=1 backward {optimizer}: triton fused{SUFFIX}",
                lambda st, opt: pool_backward_update_triton(
                    weight, st, *counters, 1, rows, offsets, grad_pooled, mean, opt
                ),
            ),
            (f"W=1 backward {optimizer}: pool_backward + sparse_update{SUFFIX}", two_pass),
            (
                f"W=1 backward {optimizer}: torch",
                lambda st, opt: pool_backward_update_reference(
                    weight, st, *counters, 1, rows, offsets, grad_pooled, mean, opt
                ),
            ),
        ):
            state = SparseOptimizer(optimizer).init_state(num_rows, dim, DEVICE)
            opt = SparseOptimizer(optimizer, 0.01)
            report.add(
                impl,
                bench(lambda fn=fn, state=state, opt=opt: fn(state, opt), DEVICE, reps),
                num_bytes,
            )


def main():
    args = _parser().parse_args()
    batch = make_batch(args.size, DEVICE)
    dim, num_rows = batch["dim"], STORAGE_ROWS[args.size]
    dtype = DTYPES[args.dtype]
    # the owner receives every key of the batch, already local rows (duplicates across senders kept)
    rows = batch["keys"] % num_rows
    gen = torch.Generator().manual_seed(0)
    grads = (1e-3 * torch.randn(rows.numel(), dim, generator=gen)).to(DEVICE)
    num_unique = torch.unique(rows).numel()
    weight = torch.randn(num_rows, dim, generator=gen).to(dtype).to(DEVICE)

    report = Report("sparse_update", args.size, DEVICE)
    optimizers = SPARSE_OPTIMIZERS if args.optimizer == "all" else (args.optimizer,)
    _measure_update(report, weight, rows, grads, num_unique, optimizers, args.reps)
    _measure_backward(report, batch, weight, rows, num_unique, gen, optimizers, args.reps)
    report.finish(f"| storage {num_rows}x{dim} {args.dtype}, K={rows.numel()} U={num_unique}")


if __name__ == "__main__":
    main()
