"""Triton forward of the embedding lookup: owner-side row gather and requester-side pooling.

``_lookup_kernel`` reads rows straight from the table and writes them in the requested dtype in
the same pass (the owner sends rows in the exchange dtype with no separate cast); widening casts
are exact, narrowing ones round to nearest even, as torch's ``.to``.

``_gather_pool_kernel`` fuses what the reference does in three passes (index_select of the
rows, index_add into bags, scaling, feature-major -> sample-major transpose): one program per
(BAGS consecutive bags, D-block) walks the bags' values in step, gathering one row per bag per
step into a [BAGS, BLOCK_D] tile (a bag of one value, the Kaggle case, no longer costs a whole
program), accumulates in fp32 in value order (the order of the reference on a CPU: the same
sums, bit for bit), scales mean bags by 1/len rounded to nearest as torch's division does
(``tl.fdiv(..., ieee_rounding=True)``; a plain ``/`` compiles to an approximate division) and
writes pooled[b, f, :] once. Nothing of size N x D is ever materialized.

Tiles: ``common_triton.tile_rows`` rows (or bags) x BLOCK_D columns, a fixed number of values a
thread, so fp32 and bf16 rows move as 16-byte vectors in every BLOCK_D class.
"""

import torch
import triton
import triton.language as tl

from kernels.common_triton import (
    NUM_WARPS,
    check_bags,
    column_block,
    column_mask,
    compile_dims,
    row_align,
    tile_rows,
)

# sizes that change per batch or per model are not value-specialized (kernels/common_triton.py)
ROW_SIZES = ["weight_stride", "num_rows", "dim", "batch_size", "num_features"]


@triton.jit(do_not_specialize=ROW_SIZES)
def _lookup_kernel(
    weight_ptr,  # [R, D] storage, any float dtype, rows strided by weight_stride
    weight_stride,  # elements between consecutive rows of weight
    rows_ptr,  # int64 [K] rows to read
    out_ptr,  # [K, D] out in the requested dtype (fp32 / bf16 / fp16), contiguous
    num_rows,  # K
    dim,  # D
    BLOCK_K: tl.constexpr,  # rows per program
    BLOCK_D: tl.constexpr,  # columns per program (one of BLOCK_DS)
    ALIGN: tl.constexpr,  # divides D and weight_stride (row_align)
):
    pid_k = tl.program_id(0)
    pid_d = tl.program_id(1)
    k = pid_k.to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    k_mask = k < num_rows
    mask = k_mask[:, None] & column_mask(d, dim, ALIGN)[None, :]
    row = tl.load(rows_ptr + k, mask=k_mask, other=0)
    src = tl.multiple_of(row * weight_stride, ALIGN)
    x = tl.load(weight_ptr + src[:, None] + d[None, :], mask=mask, other=0.0)
    dst = tl.multiple_of(k * dim, ALIGN)
    tl.store(out_ptr + dst[:, None] + d[None, :], x.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=ROW_SIZES)
def _gather_pool_kernel(
    # [R, D] rows (the unique keys' rows, or a whole table), any float dtype, contiguous
    rows_ptr,
    inverse_ptr,  # int64 [N] row of each value; values are grouped by bag, bags feature-major
    offsets_ptr,  # int64 [F*B+1] bag boundaries into inverse
    mean_ptr,  # int32 [F] 1 where feature f is mean-pooled
    out_ptr,  # float32 [B, F, D] out, contiguous
    batch_size,  # B
    num_features,  # F
    dim,  # D
    BAGS: tl.constexpr,  # bags per program (bags_per_program)
    BLOCK_D: tl.constexpr,  # columns per program (one of BLOCK_DS)
    ALIGN: tl.constexpr,  # divides D (row_align)
):
    pid_b = tl.program_id(0)
    pid_d = tl.program_id(1)
    bag = pid_b.to(tl.int64) * BAGS + tl.arange(0, BAGS)
    bag_mask = bag < batch_size * num_features
    start = tl.load(offsets_ptr + bag, mask=bag_mask, other=0)
    length = tl.load(offsets_ptr + bag + 1, mask=bag_mask, other=0) - start
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = column_mask(d, dim, ALIGN)

    acc = tl.zeros([BAGS, BLOCK_D], dtype=tl.float32)
    # the bags of a program mostly share one feature, so one length
    for j in range(0, tl.max(length)):
        v_mask = j < length
        idx = tl.load(inverse_ptr + start + j, mask=v_mask, other=0)
        src = tl.multiple_of(idx * dim, ALIGN)
        x = tl.load(
            rows_ptr + src[:, None] + d[None, :], mask=v_mask[:, None] & d_mask[None, :], other=0.0
        )
        acc += x.to(tl.float32)

    f = bag // batch_size
    b = bag % batch_size
    is_mean = tl.load(mean_ptr + f, mask=bag_mask, other=0) != 0
    # empty bags stay zero whatever the pooling: acc is 0 and the scale stays 1
    scale = tl.where(
        is_mean & (length > 0),
        tl.fdiv(1.0, tl.maximum(length, 1).to(tl.float32), ieee_rounding=True),
        1.0,
    )
    dst = tl.multiple_of((b * num_features + f) * dim, ALIGN)
    tl.store(
        out_ptr + dst[:, None] + d[None, :],
        acc * scale[:, None],
        mask=bag_mask[:, None] & d_mask[None, :],
    )


# the lookup is a pure copy: 16 values a thread keep more loads in flight, still far below the bound
_LOOKUP_VALUES_PER_THREAD = 16
OUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # lookup's out_dtype


def bags_per_program(block_d: int) -> int:
    """BAGS of the pooling kernels: a [BAGS, BLOCK_D] tile of common_triton.tile_rows (8 values per
    thread of NUM_WARPS warps)."""
    return tile_rows(block_d)


def _check_lookup(weight: torch.Tensor, rows: torch.Tensor, out_dtype: torch.dtype) -> None:
    """lookup_triton's argument checks (ValueError)."""
    if weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(
            f"weight must be a 2-D float tensor, got {weight.dtype} {tuple(weight.shape)}"
        )
    if weight.stride(1) != 1:
        raise ValueError("weight rows must be contiguous (stride(1) == 1)")
    if rows.dim() != 1 or rows.dtype != torch.int64:
        raise ValueError(f"rows must be 1-D int64, got {rows.dtype} {tuple(rows.shape)}")
    if rows.device != weight.device:
        raise ValueError(f"rows on {rows.device}, weight on {weight.device}")
    if out_dtype not in OUT_DTYPES:
        raise ValueError(f"out_dtype must be one of {OUT_DTYPES}, got {out_dtype}")


def lookup_triton(
    weight: torch.Tensor, rows: torch.Tensor, out_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Same contract as kernels.gather_pool.lookup: weight [R, D] any float, rows int64 [K]
    -> [K, D] in out_dtype (None: float32), read and cast in one pass."""
    out_dtype = out_dtype or torch.float32
    _check_lookup(weight, rows, out_dtype)
    num_rows, dim = rows.numel(), weight.shape[1]
    out = torch.empty(num_rows, dim, dtype=out_dtype, device=weight.device)
    if num_rows == 0 or dim == 0:
        return out
    rows = rows.contiguous()
    block_d = column_block(dim)
    block_k = tile_rows(block_d, _LOOKUP_VALUES_PER_THREAD)
    grid = (triton.cdiv(num_rows, block_k), triton.cdiv(dim, block_d))
    _lookup_kernel[grid](
        weight,
        weight.stride(0),
        rows,
        out,
        num_rows,
        dim,
        BLOCK_K=block_k,
        BLOCK_D=block_d,
        ALIGN=row_align(dim, weight.stride(0)),
        num_warps=NUM_WARPS,
    )
    return out


def gather_pool_triton(
    rows: torch.Tensor,
    inverse: torch.Tensor,
    offsets: torch.Tensor,
    batch_size: int,
    feature_mean: torch.Tensor,
) -> torch.Tensor:
    """Same contract as kernels.gather_pool.gather_pool: -> float32 [B, F, D]."""
    if rows.dim() != 2 or not rows.is_floating_point():
        raise ValueError(f"rows must be a 2-D float tensor, got {rows.dtype} {tuple(rows.shape)}")
    mean = check_bags(inverse, offsets, batch_size, feature_mean, rows.device)
    num_features, dim = mean.numel(), rows.shape[1]
    out = torch.empty(batch_size, num_features, dim, dtype=torch.float32, device=rows.device)
    num_bags = num_features * batch_size
    if num_bags == 0 or dim == 0:
        return out
    block_d = column_block(dim)
    bags = bags_per_program(block_d)
    grid = (triton.cdiv(num_bags, bags), triton.cdiv(dim, block_d))
    _gather_pool_kernel[grid](
        rows.contiguous(),
        inverse.contiguous(),
        offsets.contiguous(),
        mean,
        out,
        batch_size,
        num_features,
        dim,
        BAGS=bags,
        BLOCK_D=block_d,
        ALIGN=row_align(dim),
        num_warps=NUM_WARPS,
    )
    return out


# dims that reach every (BLOCK_D, ALIGN) class of the launchers
COMPILE_DIMS = compile_dims()
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def compile_cases():
    """Calls covering every specialization these launchers make (kernels.compile_check compiles them):
    each row dtype x (BLOCK_D, ALIGN) class, and for the lookup each out_dtype."""
    offsets = torch.tensor([0, 2, 2, 5, 6], dtype=torch.int64)  # F=2, B=2, an empty bag
    inverse = torch.tensor([0, 1, 2, 0, 3, 4], dtype=torch.int64)
    mean = torch.tensor([True, False])
    for dtype in FLOAT_DTYPES:
        for dim in COMPILE_DIMS:
            weight = torch.zeros(7, dim, dtype=dtype)
            for out_dtype in OUT_DTYPES:
                yield lambda w=weight, o=out_dtype: lookup_triton(w, inverse, o)
            yield lambda w=weight: gather_pool_triton(w[:5], inverse, offsets, 2, mean)
