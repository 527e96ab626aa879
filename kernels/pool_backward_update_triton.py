"""Triton pooling backward fused with the sparse optimizer (W = 1): one pass per looked-up row.

Host side (kernels.pool_backward_update_host_triton; one host sync, for the number of rows U):
values are sorted by the row they read into one segment per row, and each segment is cut into
work items of at most CHUNK values.

``_segment_update_kernel``, one program per work item: sums the item's pooled-gradient rows (times
their scale) in registers. A segment of one item (the usual case) is then updated right there:
row-wise Adagrad / SGD / lazy Adam in fp32 on the row and its state, plus freq += segment length
and last_step = step. A longer segment (a hot row: hundreds of values) adds its items' partial sums
into a small fp32 buffer with atomics, and ``_long_update_kernel`` updates those rows from it.

No [U, D] gradient is written or read back, unlike pool_backward + sparse_update; short segments
are summed in a fixed order, so the result is deterministic run to run (long ones to fp32
round-off). The optimizer's row math: kernels.sparse_optimizer_triton.
"""

import torch
import triton
import triton.language as tl

from kernels.common_triton import column_block, column_mask, row_align
from kernels.pool_backward_update_host_triton import check_args, segments, update_args, work_items
from kernels.sparse_optimizer import SparseOptimizer
from kernels.sparse_optimizer_triton import ADAGRAD, row_factors, update_columns

CHUNK = 256  # values per work item: longer segments are split and finished by _long_update_kernel
BLOCK_V = 8  # values summed per step
NUM_WARPS = 2  # one row of 128 fp32 per program: 64 threads x 2 x 16-byte vectors
_SIZES = ["num_segments", "dim", "weight_stride", "step", "optimizer", "num_long_bound"]


@triton.jit
def _sum_values(
    grad_ptr,
    grad_row_ptr,
    scale_ptr,
    start,
    end,
    d,
    d_mask,
    dim,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
    ALIGN: tl.constexpr,
):
    """Sum over sorted values [start, end) of scale * pooled gradient row, columns d."""
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for v0 in range(start, end, BLOCK_V):
        v = v0 + tl.arange(0, BLOCK_V)
        v_mask = v < end
        grow = tl.load(grad_row_ptr + v, mask=v_mask, other=0).to(tl.int64)
        scale = tl.load(scale_ptr + v, mask=v_mask, other=0.0)
        src = tl.multiple_of(grow * dim, ALIGN)
        g = tl.load(
            grad_ptr + src[:, None] + d[None, :], mask=v_mask[:, None] & d_mask[None, :], other=0.0
        )
        acc += tl.sum(g.to(tl.float32) * scale[:, None], axis=0)
    return acc


@triton.jit(do_not_specialize=_SIZES)
def _segment_update_kernel(
    item_seg_ptr,  # int64 [>= items] segment of each work item (valid below item_start[U])
    item_start_ptr,  # int64 [U+1] first work item of each segment; item_start[U] = number of items
    seg_start_ptr,  # int64 [U+1] segment s is sorted values seg_start[s] .. seg_start[s+1]
    seg_row_ptr,  # int64 [U] local row of each segment
    grad_row_ptr,  # int32 [N] pooled-gradient row (b * F + f) of each sorted value
    scale_ptr,  # float32 [N] bag scale of each sorted value (1/len for mean bags, else 1)
    grad_ptr,  # [B*F, D] pooled gradient, contiguous
    num_segments,  # U
    dim,  # D
    weight_ptr,  # [R, D] storage, updated in place
    weight_stride,  # elements between rows of weight
    m1_ptr,  # adagrad: float32 [R]; adam: float32 [R, D]
    m2_ptr,  # adam: float32 [R, D]
    steps_ptr,  # adam: int64 [R]
    freq_ptr,  # int64 [R] lookups per row, += segment length
    last_step_ptr,  # int64 [R] set to step for every updated row
    step,  # this update's step number
    optimizer,  # SGD, ADAGRAD (row-wise) or ADAM (lazy) of sparse_optimizer_triton
    lr,
    eps,
    beta1,
    beta2,
    one_minus_beta1,
    one_minus_beta2,
    log2_beta1,
    log2_beta2,  # kernel_args
    partial_ptr,  # float32 [num_long_bound, D] zeroed: partial sums of long segments (atomics)
    long_index_ptr,  # int64 [U] index of each long segment among the long ones
    long_seg_ptr,  # int64 [num_long_bound] out: segment of each long segment index
    num_long_bound,  # rows of partial_ptr
    CHUNK: tl.constexpr,  # values per work item
    BLOCK_V: tl.constexpr,  # values summed per step
    BLOCK_D: tl.constexpr,  # columns per step (one of common_triton.BLOCK_DS)
    ALIGN: tl.constexpr,  # divides D and weight_stride (row_align)
):
    item = tl.program_id(0).to(tl.int64)
    active = item < tl.load(item_start_ptr + num_segments)
    s = tl.minimum(tl.load(item_seg_ptr + item, mask=active, other=0), num_segments - 1)
    seg_lo = tl.load(seg_start_ptr + s)
    seg_hi = tl.load(seg_start_ptr + s + 1)
    k = item - tl.load(item_start_ptr + s)
    start = seg_lo + k * CHUNK
    # an inactive program sums nothing
    end = tl.where(active, tl.minimum(start + CHUNK, seg_hi), start)
    is_long = (seg_hi - seg_lo) > CHUNK
    d = tl.arange(0, BLOCK_D)
    # masks are built from a column bound of 0 on inactive programs (combining a scalar flag with a vector mask
    # by & yields an int mask under the interpreter); the sums read from dim's columns either way
    bound = tl.where(active, dim, 0)
    first_mask = column_mask(d, dim, ALIGN)
    first_write = column_mask(d, bound, ALIGN)
    acc0 = _sum_values(
        grad_ptr, grad_row_ptr, scale_ptr, start, end, d, first_mask, dim, BLOCK_V, BLOCK_D, ALIGN
    )

    if is_long:
        li = tl.load(long_index_ptr + s)
        tl.store(long_seg_ptr + li, s, mask=tl.where(active, k, 1) == 0)
        p_base = tl.multiple_of(li * dim, ALIGN)
        tl.atomic_add(partial_ptr + p_base + d, acc0, mask=first_write, sem="relaxed")
        for d0 in range(BLOCK_D, dim, BLOCK_D):
            cols = d0 + d
            acc = _sum_values(
                grad_ptr,
                grad_row_ptr,
                scale_ptr,
                start,
                end,
                cols,
                column_mask(cols, dim, ALIGN),
                dim,
                BLOCK_V,
                BLOCK_D,
                ALIGN,
            )
            tl.atomic_add(
                partial_ptr + p_base + cols,
                acc,
                mask=column_mask(cols, bound, ALIGN),
                sem="relaxed",
            )
    else:
        row = tl.load(seg_row_ptr + s)
        sq = tl.sum(acc0 * acc0)
        # row-wise Adagrad needs the whole row's mean(g^2) before any column moves
        if optimizer == ADAGRAD:
            for d0 in range(BLOCK_D, dim, BLOCK_D):
                cols = d0 + d
                acc = _sum_values(
                    grad_ptr,
                    grad_row_ptr,
                    scale_ptr,
                    start,
                    end,
                    cols,
                    column_mask(cols, dim, ALIGN),
                    dim,
                    BLOCK_V,
                    BLOCK_D,
                    ALIGN,
                )
                sq += tl.sum(acc * acc)
        denom, bias1, bias2 = row_factors(
            row, sq, dim, m1_ptr, steps_ptr, optimizer, eps, log2_beta1, log2_beta2, active
        )
        w_base = tl.multiple_of(row * weight_stride, ALIGN)
        s_base = tl.multiple_of(row * dim, ALIGN)
        update_columns(
            weight_ptr,
            w_base,
            m1_ptr,
            m2_ptr,
            s_base,
            d,
            first_write,
            acc0,
            optimizer,
            lr,
            eps,
            beta1,
            beta2,
            one_minus_beta1,
            one_minus_beta2,
            denom,
            bias1,
            bias2,
        )
        for d0 in range(BLOCK_D, dim, BLOCK_D):
            cols = d0 + d
            acc = _sum_values(
                grad_ptr,
                grad_row_ptr,
                scale_ptr,
                start,
                end,
                cols,
                column_mask(cols, dim, ALIGN),
                dim,
                BLOCK_V,
                BLOCK_D,
                ALIGN,
            )
            update_columns(
                weight_ptr,
                w_base,
                m1_ptr,
                m2_ptr,
                s_base,
                cols,
                column_mask(cols, bound, ALIGN),
                acc,
                optimizer,
                lr,
                eps,
                beta1,
                beta2,
                one_minus_beta1,
                one_minus_beta2,
                denom,
                bias1,
                bias2,
            )
        tl.store(
            freq_ptr + row,
            tl.load(freq_ptr + row, mask=active, other=0) + (seg_hi - seg_lo),
            mask=active,
        )
        tl.store(last_step_ptr + row, step.to(tl.int64), mask=active)


@triton.jit(do_not_specialize=_SIZES)
def _long_update_kernel(
    num_long_ptr,  # int64 [1] number of long segments
    long_seg_ptr,  # int64 [num_long_bound] segment of each long segment index
    partial_ptr,  # float32 [num_long_bound, D] their summed gradients
    seg_start_ptr,  # int64 [U+1] segment boundaries (for the lookup counts)
    seg_row_ptr,  # int64 [U] local row of each segment
    num_segments,  # U
    dim,  # D
    # as above
    weight_ptr,
    weight_stride,
    m1_ptr,
    m2_ptr,
    steps_ptr,
    freq_ptr,
    last_step_ptr,
    step,
    optimizer,
    lr,
    eps,
    beta1,
    beta2,
    one_minus_beta1,
    one_minus_beta2,
    log2_beta1,
    log2_beta2,
    num_long_bound,  # rows of partial_ptr
    BLOCK_D: tl.constexpr,  # columns per step
    ALIGN: tl.constexpr,  # divides D and weight_stride
):
    li = tl.program_id(0).to(tl.int64)
    active = li < tl.load(num_long_ptr)
    s = tl.minimum(tl.load(long_seg_ptr + li, mask=active, other=0), num_segments - 1)
    row = tl.load(seg_row_ptr + s)
    d = tl.arange(0, BLOCK_D)
    p_base = tl.multiple_of(li * dim, ALIGN)
    bound = tl.where(active, dim, 0)  # see _segment_update_kernel
    sq = tl.full((), 0.0, tl.float32)
    if optimizer == ADAGRAD:
        for d0 in range(0, dim, BLOCK_D):
            cols = d0 + d
            g = tl.load(
                partial_ptr + p_base + cols, mask=column_mask(cols, bound, ALIGN), other=0.0
            )
            sq += tl.sum(g * g)
    denom, bias1, bias2 = row_factors(
        row, sq, dim, m1_ptr, steps_ptr, optimizer, eps, log2_beta1, log2_beta2, active
    )
    w_base = tl.multiple_of(row * weight_stride, ALIGN)
    s_base = tl.multiple_of(row * dim, ALIGN)
    for d0 in range(0, dim, BLOCK_D):
        cols = d0 + d
        mask = column_mask(cols, bound, ALIGN)
        g = tl.load(partial_ptr + p_base + cols, mask=mask, other=0.0)
        update_columns(
            weight_ptr,
            w_base,
            m1_ptr,
            m2_ptr,
            s_base,
            cols,
            mask,
            g,
            optimizer,
            lr,
            eps,
            beta1,
            beta2,
            one_minus_beta1,
            one_minus_beta2,
            denom,
            bias1,
            bias2,
        )
    length = tl.load(seg_start_ptr + s + 1) - tl.load(seg_start_ptr + s)
    tl.store(freq_ptr + row, tl.load(freq_ptr + row, mask=active, other=0) + length, mask=active)
    tl.store(last_step_ptr + row, step.to(tl.int64), mask=active)


def pool_backward_update_triton(
    weight,
    state,
    freq,
    last_step,
    step,
    value_rows,
    offsets,
    grad_pooled,
    feature_mean,
    optimizer: SparseOptimizer,
) -> int:
    """Same contract as kernels.pool_backward_update.pool_backward_update (in place)."""
    mean = check_args(
        weight, state, freq, last_step, value_rows, offsets, grad_pooled, feature_mean, optimizer
    )
    batch_size, _, dim = grad_pooled.shape
    n = value_rows.numel()
    if n == 0 or dim == 0:
        return 0
    seg = segments(value_rows, offsets, mean, batch_size, weight.shape[0])
    num_segments = seg.row.numel()
    items = work_items(seg.start, n, dim, CHUNK)
    block_d, align = column_block(dim), row_align(dim, weight.stride(0))
    update = update_args(weight, state, freq, last_step, step, value_rows, optimizer)
    grad = grad_pooled.contiguous()
    _segment_update_kernel[(items.num_items_bound,)](
        items.item_seg,
        items.item_start,
        *seg,
        grad,
        num_segments,
        dim,
        *update,
        items.partial,
        items.long_index,
        items.long_seg,
        items.num_long_bound,
        CHUNK=CHUNK,
        BLOCK_V=BLOCK_V,
        BLOCK_D=block_d,
        ALIGN=align,
        num_warps=NUM_WARPS,
    )
    _long_update_kernel[(items.num_long_bound,)](
        items.num_long,
        items.long_seg,
        items.partial,
        seg.start,
        seg.row,
        num_segments,
        dim,
        *update,
        items.num_long_bound,
        BLOCK_D=block_d,
        ALIGN=align,
        num_warps=NUM_WARPS,
    )
    return num_segments


def compile_cases():
    """Calls covering every specialization this launcher makes (kernels.compile_check compiles them):
    each storage dtype x (BLOCK_D, ALIGN) class; the optimizer is a runtime argument."""
    adagrad = SparseOptimizer("adagrad", 0.1)
    offsets = torch.tensor([0, 2, 2, 5, 6], dtype=torch.int64)  # F=2, B=2, an empty bag
    value_rows = torch.tensor([0, 1, 2, 0, 3, 4], dtype=torch.int64)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for dim in (3, 16, 100, 128):
            weight = torch.zeros(8, dim, dtype=dtype)
            freq, last = torch.zeros(8, dtype=torch.int64), torch.zeros(8, dtype=torch.int64)
            yield lambda w=weight, f=freq, s=last, d=dim: pool_backward_update_triton(
                w,
                adagrad.init_state(8, d, "cpu"),
                f,
                s,
                1,
                value_rows,
                offsets,
                torch.zeros(2, 2, d),
                torch.tensor([True, False]),
                adagrad,
            )
