"""Triton scatter_replicated and append_replicated (kernels.replicated): one kernel each, reading
the received gradients and counts through their strides (no copies)."""

import torch
import triton
import triton.language as tl

from kernels.common_triton import column_block, tile_rows

_SIZES = ["grad_stride", "count_stride", "num_entries", "num_replicated", "dim"]


@triton.jit(do_not_specialize=_SIZES)
def _scatter_kernel(
    rows_ptr,  # int64 [K] storage row of each received gradient
    grads_ptr,  # float32 [K, D] received gradients, rows grad_stride apart
    grad_stride,  # elements between rows of grads
    counts_ptr,  # int32/int64 [K] lookups of each gradient, count_stride apart
    count_stride,  # elements between entries of counts
    num_entries,  # K
    num_replicated,  # n: rows below n are replicated
    dim,  # D
    dense_ptr,  # float32 [n, D + 1] out (zeroed): gradient and count of each replicated row
    ROWS: tl.constexpr,  # entries per program
    BLOCK_D: tl.constexpr,  # columns per step
):
    r = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    m = r < num_entries
    row = tl.load(rows_ptr + r, mask=m, other=0)
    rep = m & (row < num_replicated)
    out = dense_ptr + row * (dim + 1)
    for c in range(0, dim, BLOCK_D):
        cols = c + tl.arange(0, BLOCK_D)
        cm = rep[:, None] & (cols[None, :] < dim)
        g = tl.load(grads_ptr + r[:, None] * grad_stride + cols[None, :], mask=cm, other=0.0)
        tl.store(out[:, None] + cols[None, :], g, mask=cm)
    count = tl.load(counts_ptr + r * count_stride, mask=rep, other=0)
    tl.store(out + dim, count.to(tl.float32), mask=rep)


@triton.jit(do_not_specialize=_SIZES)
def _append_kernel(
    rows_ptr,  # int64 [K] storage row of each received gradient
    grads_ptr,  # float32 [K, D] received gradients, rows grad_stride apart
    grad_stride,  # elements between rows of grads
    counts_ptr,  # int32/int64 [K] lookups of each gradient, count_stride apart
    count_stride,  # elements between entries of counts
    num_entries,  # K
    num_replicated,  # n
    dim,  # D
    dense_ptr,  # float32 [n, D + 1] the replicated rows' gradients and counts, summed over ranks
    rows_out_ptr,  # int64 [K + n] out: storage row of each entry
    grads_out_ptr,  # float32 [K + n, D] out, contiguous: gradient of each entry
    counts_out_ptr,  # int32 [K + n] out: lookups of each entry
    ROWS: tl.constexpr,  # entries per program
    BLOCK_D: tl.constexpr,  # columns per step
):
    r = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    m = r < num_entries + num_replicated
    received = r < num_entries
    j = r - num_entries  # the replicated row of an entry from dense
    from_dense = m & ~received
    row = tl.where(received, tl.load(rows_ptr + r, mask=received, other=0), j)
    # a received gradient of a replicated row is already in dense: it adds 0 (times 0, as a scale)
    keep = tl.where(received & (row < num_replicated), 0.0, 1.0)
    tl.store(rows_out_ptr + r, row, mask=m)
    for c in range(0, dim, BLOCK_D):
        cols = c + tl.arange(0, BLOCK_D)
        cm = cols[None, :] < dim
        g = tl.load(
            grads_ptr + r[:, None] * grad_stride + cols[None, :], mask=received[:, None] & cm
        )
        summed = tl.load(
            dense_ptr + j[:, None] * (dim + 1) + cols[None, :], mask=from_dense[:, None] & cm
        )
        g = tl.where(received[:, None], g * keep[:, None], summed)
        tl.store(grads_out_ptr + r[:, None] * dim + cols[None, :], g, mask=m[:, None] & cm)
    count = tl.load(counts_ptr + r * count_stride, mask=received, other=0).to(tl.int32)
    # the all-reduced counts are exact integers in float32 (below 2^24)
    total = tl.load(dense_ptr + j * (dim + 1) + dim, mask=from_dense, other=0.0)
    count = tl.where(received, tl.where(keep == 0.0, 0, count), (total + 0.5).to(tl.int32))
    tl.store(counts_out_ptr + r, count, mask=m)


def _check(rows, grads, counts) -> None:
    k = rows.numel()
    if rows.dim() != 1 or rows.dtype != torch.int64:
        raise ValueError(f"rows must be 1-D int64, got {rows.dtype} {tuple(rows.shape)}")
    if grads.dtype != torch.float32 or grads.dim() != 2 or grads.shape[0] != k:
        raise ValueError(f"grads must be float32 [{k}, D], got {grads.dtype} {tuple(grads.shape)}")
    if counts.dtype not in (torch.int32, torch.int64) or counts.shape != (k,):
        raise ValueError(
            f"counts must be int32/int64 [{k}], got {counts.dtype} {tuple(counts.shape)}"
        )
    if grads.stride(1) != 1:
        raise ValueError("grads must have contiguous rows")


def _tiles(dim: int) -> dict:
    block_d = column_block(dim)
    return dict(ROWS=tile_rows(block_d), BLOCK_D=block_d)


def scatter_replicated_triton(rows, grads, counts, num_replicated: int) -> torch.Tensor:
    """Same contract as kernels.replicated.scatter_replicated."""
    _check(rows, grads, counts)
    k, dim = grads.shape
    dense = torch.zeros(num_replicated, dim + 1, dtype=torch.float32, device=grads.device)
    tiles = _tiles(dim)
    if k and num_replicated:
        _scatter_kernel[(triton.cdiv(k, tiles["ROWS"]),)](
            rows, grads, grads.stride(0), counts, counts.stride(0), k, num_replicated, dim,
            dense, **tiles,
        )  # fmt: skip
    return dense


def append_replicated_triton(rows, grads, counts, dense):
    """Same contract as kernels.replicated.append_replicated."""
    _check(rows, grads, counts)
    k, dim = grads.shape
    n = dense.shape[0]
    if dense.dtype != torch.float32 or dense.shape != (n, dim + 1) or not dense.is_contiguous():
        raise ValueError(
            f"dense must be contiguous float32 [n, {dim + 1}], got {dense.dtype} "
            f"{tuple(dense.shape)}"
        )
    device = grads.device
    rows_out = torch.empty(k + n, dtype=torch.int64, device=device)
    grads_out = torch.empty(k + n, dim, dtype=torch.float32, device=device)
    counts_out = torch.empty(k + n, dtype=torch.int32, device=device)
    tiles = _tiles(dim)
    if k + n:
        _append_kernel[(triton.cdiv(k + n, tiles["ROWS"]),)](
            rows, grads, grads.stride(0), counts, counts.stride(0), k, n, dim, dense,
            rows_out, grads_out, counts_out, **tiles,
        )  # fmt: skip
    return rows_out, grads_out, counts_out


def compile_cases():
    """Calls covering every specialization these launchers make (kernels.compile_check compiles
    them): each column block, int32 and int64 counts, strided gradients."""
    rows = torch.tensor([3, 0, 7, 1, 9], dtype=torch.int64)
    for dim in (16, 32, 64, 128, 200):
        message = torch.zeros(5, dim + 1)
        for counts in (message.view(torch.int32)[:, dim], torch.ones(5, dtype=torch.int64)):

            def case(g=message[:, :dim], c=counts):
                dense = scatter_replicated_triton(rows, g, c, 4)
                append_replicated_triton(rows, g, c, dense)

            yield case
