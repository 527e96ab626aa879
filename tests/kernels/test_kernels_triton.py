"""Triton kernels against their torch references.

Without a GPU the kernels run under the Triton interpreter (TRITON_INTERPRET=1, set below and in
tests/conftest.py before any kernels.*_triton import); shapes stay small because every
program instance is executed in Python. With a GPU the same parametrization runs compiled on
CUDA (inputs are made on the CPU and moved to DEVICE; the reference runs on the CPU copies).
The launchers are called directly so that the dispatch flag RECFUSE_FORCE_TRITON is only set
inside the one test that checks dispatch.
"""

import functools
import os

import torch

# torch does not import triton, so this still precedes triton's import when this file runs alone
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import kernels  # noqa: E402
from kernels.common_triton import INTERPRETED  # noqa: E402
from kernels.gather_pool import gather_pool_reference, lookup_reference  # noqa: E402
from kernels.gather_pool_triton import gather_pool_triton, lookup_triton  # noqa: E402
from kernels.pool_backward import pool_backward_reference  # noqa: E402
from kernels.pool_backward_triton import pool_backward_triton  # noqa: E402
from kernels.sparse_optimizer import SparseOptimizer  # noqa: E402
from kernels.sparse_update import sparse_update_reference  # noqa: E402
from kernels.sparse_update_triton import sparse_update_triton  # noqa: E402
from tests.support.kernels import (  # noqa: E402
    DEVICE,
    HAS_CUDA,
    check_unique_partition,
    needs_triton,
    on,
)

DIMS = (1, 3, 16, 17, 64, 128)  # every column class: 16, 32, 64, 128 (aligned or not)


# ---------------------------------------------------------------------------------------------
# gather_pool / lookup / pool_backward

LAYOUTS = {
    # name: (batch_size, bag lengths feature-major [F*B]); F = 2 everywhere
    "irregular": (3, [0, 1, 3, 20, 2, 0]),  # empty bags, one-element bag, a bag longer than BLOCK_V
    "one_element": (1, [1, 0]),
    "all_empty": (2, [0, 0, 0, 0]),
}
POOLINGS = {"sum": [False, False], "mean": [True, True], "mixed": [True, False]}


def make_bags(layout: str, pooling: str, num_unique: int, gen: torch.Generator):
    batch_size, lengths = LAYOUTS[layout]
    lengths = torch.tensor(lengths, dtype=torch.int64)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    # few unique rows -> many duplicates, also inside one bag
    inverse = torch.randint(0, num_unique, (int(lengths.sum()),), generator=gen, dtype=torch.int64)
    return batch_size, inverse, offsets, torch.tensor(POOLINGS[pooling])


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("pooling", list(POOLINGS))
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_gather_pool(layout, pooling, dim, dtype):
    gen = torch.Generator().manual_seed(dim)
    batch_size, inverse, offsets, feature_mean = make_bags(layout, pooling, 5, gen)
    rows = torch.randn(5, dim, generator=gen).to(dtype)
    out = gather_pool_triton(*on(rows, inverse, offsets), batch_size, on(feature_mean)).cpu()
    assert out.dtype == torch.float32 and out.shape == (batch_size, 2, dim)
    # the same bits: fp32 sums in value order, as the reference on the CPU, and 1/len rounded to
    # nearest (tl.fdiv ieee_rounding; test_kernels_compile checks the PTX has no approximate division)
    torch.testing.assert_close(
        out, gather_pool_reference(rows, inverse, offsets, batch_size, feature_mean), rtol=0, atol=0
    )


@needs_triton
@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("pooling", list(POOLINGS))
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_pool_backward(layout, pooling, dim):
    gen = torch.Generator().manual_seed(dim + 1)
    batch_size, inverse, offsets, feature_mean = make_bags(layout, pooling, 5, gen)
    grad = torch.randn(batch_size, 2, dim, generator=gen)
    out = pool_backward_triton(*on(grad, inverse, offsets, feature_mean), 5).cpu()
    # compiled, the scale may fuse into the sums (FMA): equal to round-off, not bitwise
    torch.testing.assert_close(
        out, pool_backward_reference(grad, inverse, offsets, feature_mean, 5)
    )


def interpreter_bf16(x: torch.Tensor) -> torch.Tensor:
    """x cast to bf16 the way the Triton interpreter casts: truncation (the low 16 bits of the fp32
    value dropped). Compiled kernels round to nearest even, as torch does."""
    bits = x.float().view(torch.int32) & -65536  # 0xFFFF0000
    return bits.view(torch.float32).to(torch.bfloat16)  # exact: the dropped bits are zero


@needs_triton
@pytest.mark.parametrize("num_rows", [0, 1, 9])
@pytest.mark.parametrize("out_dtype", [None, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("dim", DIMS)
def test_lookup(dim, dtype, out_dtype, num_rows):
    """Rows read and cast in one pass: the same bits as index_select(...).to(out_dtype)."""
    gen = torch.Generator().manual_seed(dim)
    weight = (torch.randn(6, dim, generator=gen) * 1e3).to(dtype)  # fp16 keeps 1e3, bf16 rounds
    rows = torch.randint(0, 6, (num_rows,), generator=gen, dtype=torch.int64)
    out = lookup_triton(*on(weight, rows), out_dtype=out_dtype).cpu()
    want = lookup_reference(weight, rows, out_dtype)
    assert out.dtype == want.dtype == (out_dtype or torch.float32)
    if INTERPRETED and want.dtype == torch.bfloat16 and dtype != torch.bfloat16:
        want = interpreter_bf16(weight.index_select(0, rows))
    assert torch.equal(out, want)


def test_lookup_rejects_an_out_dtype_it_cannot_write():
    with pytest.raises(ValueError, match="out_dtype"):
        lookup_triton(torch.zeros(3, 4), torch.zeros(2, dtype=torch.int64), torch.float64)


def test_gather_pool_rejects_bad_input():
    rows = torch.zeros(3, 4)
    offsets = torch.tensor([0, 1, 2], dtype=torch.int64)
    with pytest.raises(ValueError, match="offsets"):
        gather_pool_triton(
            rows, torch.zeros(2, dtype=torch.int64), offsets, 3, torch.tensor([True])
        )
    with pytest.raises(ValueError, match="inverse"):
        gather_pool_triton(
            rows, torch.zeros(2, dtype=torch.int32), offsets, 2, torch.tensor([True])
        )
    with pytest.raises(ValueError, match="rows"):
        lookup_triton(rows, torch.zeros(2, dtype=torch.int32))


# ---------------------------------------------------------------------------------------------
# sparse_update

ROW_PATTERNS = {"duplicates": [3, 3, 0, 9, 3, 5], "one": [4], "empty": [], "unique": [7, 0, 9, 2]}


def run_sparse_update(update, optimizer, dim, dtype, pattern, device="cpu"):
    gen = torch.Generator().manual_seed(dim * 7 + len(pattern))
    weight = torch.randn(10, dim, generator=gen).to(dtype).to(device)
    opt = SparseOptimizer(optimizer, 0.1)
    state = opt.init_state(10, dim, device)
    rows = torch.tensor(ROW_PATTERNS[pattern], dtype=torch.int64, device=device)
    for _ in range(2):  # the second step exercises non-zero state and adam's per-row steps
        grads = torch.randn(rows.numel(), dim, generator=gen).to(device)
        update(weight, rows, grads, state, opt)
    return weight.cpu(), {k: v.cpu() for k, v in state.items()}


def assert_same_update(got, want, dtype):
    # the interpreter casts fp32 -> bf16 by truncation (GPUs round to nearest even), so bf16
    # storage may differ by one bf16 ulp per step
    tol = {"rtol": 2e-2, "atol": 2e-2} if dtype == torch.bfloat16 else {}
    torch.testing.assert_close(got[0], want[0], **tol)
    assert got[1].keys() == want[1].keys()
    for name in want[1]:
        torch.testing.assert_close(got[1][name], want[1][name])


@needs_triton
@pytest.mark.parametrize("pattern", list(ROW_PATTERNS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("optimizer", ["sgd", "adagrad", "adam"])
def test_sparse_update(optimizer, dim, dtype, pattern):
    got = run_sparse_update(sparse_update_triton, optimizer, dim, dtype, pattern, DEVICE)
    want = run_sparse_update(sparse_update_reference, optimizer, dim, dtype, pattern)
    assert_same_update(got, want, dtype)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dim", [1, 5, 32])
@pytest.mark.parametrize("optimizer", ["sgd", "adagrad", "adam"])
def test_sparse_update_rows_unique_skips_the_merge(optimizer, dim, dtype):
    """rows_unique=True on rows without duplicates: the same update as the merging path, both kernels."""
    want = run_sparse_update(sparse_update_reference, optimizer, dim, dtype, "unique")
    for update, device in ((sparse_update_reference, "cpu"), (sparse_update_triton, DEVICE)):
        unique_update = functools.partial(update, rows_unique=True)
        assert_same_update(
            run_sparse_update(unique_update, optimizer, dim, dtype, "unique", device), want, dtype
        )


@needs_triton
@pytest.mark.parametrize("optimizer", ["adagrad", "adam"])
def test_sparse_update_fp16(optimizer):
    got = run_sparse_update(
        sparse_update_triton, optimizer, 17, torch.float16, "duplicates", DEVICE
    )
    want = run_sparse_update(sparse_update_reference, optimizer, 17, torch.float16, "duplicates")
    assert_same_update(got, want, torch.float16)


def test_sparse_update_rejects_bad_input():
    weight = torch.zeros(4, 3)
    rows = torch.tensor([1], dtype=torch.int64)
    with pytest.raises(ValueError, match="unknown sparse optimizer"):
        sparse_update_triton(weight, rows, torch.zeros(1, 3), {}, SparseOptimizer("rmsprop", 0.1))
    with pytest.raises(ValueError, match="momentum1"):
        sparse_update_triton(weight, rows, torch.zeros(1, 3), {}, SparseOptimizer("adagrad", 0.1))
    with pytest.raises(ValueError, match="grads"):
        sparse_update_triton(weight, rows, torch.zeros(2, 3), {}, SparseOptimizer("sgd", 0.1))


# ---------------------------------------------------------------------------------------------
# dispatch: the public functions route CPU tensors to Triton when forced


@needs_triton
def test_public_functions_dispatch_to_triton(monkeypatch):
    """kernels.* route CUDA tensors to Triton; CPU tensors only when forced (how the interpreter runs them)."""
    if INTERPRETED:
        monkeypatch.setenv("RECFUSE_FORCE_TRITON", "1")
    keys = torch.tensor([7, 2, 7, 40, 2], dtype=torch.int64)
    offsets = torch.tensor([0, 10, 50], dtype=torch.int64)
    owners = torch.tensor([0, -1], dtype=torch.int64)
    check_unique_partition(
        keys, offsets, owners, 2, kernels.unique_partition(*on(keys, offsets, owners), 2)
    )
    gen = torch.Generator().manual_seed(0)
    batch_size, inverse, offsets, feature_mean = make_bags("irregular", "mixed", 5, gen)
    rows = torch.randn(5, 3, generator=gen)
    torch.testing.assert_close(
        kernels.gather_pool(*on(rows, inverse, offsets), batch_size, on(feature_mean)).cpu(),
        gather_pool_reference(rows, inverse, offsets, batch_size, feature_mean),
    )
    grad = torch.randn(batch_size, 2, 3, generator=gen)
    torch.testing.assert_close(
        kernels.pool_backward(*on(grad, inverse, offsets, feature_mean), 5).cpu(),
        pool_backward_reference(grad, inverse, offsets, feature_mean, 5),
    )
    torch.testing.assert_close(
        kernels.lookup(*on(rows, inverse)).cpu(), lookup_reference(rows, inverse)
    )
    assert_same_update(
        run_sparse_update(kernels.sparse_update, "adam", 3, torch.float32, "duplicates", DEVICE),
        run_sparse_update(sparse_update_reference, "adam", 3, torch.float32, "duplicates"),
        torch.float32,
    )


# ---------------------------------------------------------------------------------------------
# the compiled kernels on a GPU (larger shapes)


@pytest.mark.parametrize("dim", [17, 128])
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA or INTERPRETED, reason="needs a CUDA device and compiled Triton")
def test_pool_and_update_cuda(dim):
    gen = torch.Generator().manual_seed(2)
    batch_size, num_features, num_unique = 256, 4, 1000
    lengths = torch.randint(0, 6, (num_features * batch_size,), generator=gen)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)]).cuda()
    inverse = torch.randint(0, num_unique, (int(lengths.sum()),), generator=gen).cuda()
    mean = torch.tensor([True, False, True, False]).cuda()
    rows = torch.randn(num_unique, dim, generator=gen).cuda()
    torch.testing.assert_close(
        gather_pool_triton(rows, inverse, offsets, batch_size, mean),
        gather_pool_reference(rows, inverse, offsets, batch_size, mean),
    )
    grad = torch.randn(batch_size, num_features, dim, generator=gen).cuda()
    torch.testing.assert_close(
        pool_backward_triton(grad, inverse, offsets, mean, num_unique),
        pool_backward_reference(grad, inverse, offsets, mean, num_unique),
    )
    for optimizer in ("sgd", "adagrad", "adam"):
        for dtype in (torch.float32, torch.bfloat16):
            assert_same_update(
                run_sparse_update(
                    sparse_update_triton, optimizer, dim, dtype, "duplicates", "cuda"
                ),
                run_sparse_update(
                    sparse_update_reference, optimizer, dim, dtype, "duplicates", "cuda"
                ),
                dtype,
            )
