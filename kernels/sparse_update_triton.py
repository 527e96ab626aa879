"""Triton owner-side sparse optimizer: merge duplicate rows, then one fused update kernel.

1. Dedup the touched rows with ``unique_partition_triton`` (one owner, one table, the direct
   map over the local rows): no sort, one host sync to size the unique set.
2. ``_merge_kernel`` sums the gradients of duplicate rows into grad_unique [U, D] with fp32
   atomics (order-dependent to fp32 round-off only).
3. ``_update_kernel`` applies SGD / row-wise Adagrad / lazy Adam to each unique row exactly
   once: read weight row + state, fp32 math, write back in the storage dtype. Rows are walked
   in BLOCK_D-column chunks; row-wise Adagrad first sums g^2 over the whole row (its mean
   scales every column), then updates. The optimizer is a constexpr: one variant each.

Tiles: ``common_triton.tile_rows`` rows x BLOCK_D columns, one 16-byte vector of the weight a
thread (Adam holds four operands: gradient, weight and both moments), which keeps every variant
under common_triton.MAX_REGISTERS without spills.

Optimizers, state layout and math: kernels.sparse_optimizer; the row math in Triton, shared with
pool_backward_update_triton: kernels.sparse_optimizer_triton.
"""

import torch
import triton
import triton.language as tl

from kernels.common_triton import (
    NUM_WARPS,
    column_block,
    column_mask,
    compile_dims,
    row_align,
    tile_rows,
    vector_values,
)
from kernels.sparse_optimizer import SPARSE_OPTIMIZERS, SparseOptimizer
from kernels.sparse_optimizer_triton import ADAGRAD, kernel_args, row_factors, update_columns
from kernels.unique_partition_triton import unique_partition_triton

# the merge's atomics hold no state between columns: 16 values a thread keep more adds in flight
_MERGE_VALUES_PER_THREAD = 16


@triton.jit(do_not_specialize=["num_grads", "dim"])
def _merge_kernel(
    grads_ptr,  # float [K, D] gradient per touched row (duplicates included), contiguous
    inverse_ptr,  # int64 [K] unique index of each touched row
    out_ptr,  # float32 [U, D] out, zero-initialized, accumulated with atomics
    num_grads,  # K
    dim,  # D
    BLOCK_K: tl.constexpr,  # gradient rows per program
    BLOCK_D: tl.constexpr,  # columns per program (one of common_triton.BLOCK_DS)
    ALIGN: tl.constexpr,  # divides D (common_triton.row_align)
):
    pid_k = tl.program_id(0)
    pid_d = tl.program_id(1)
    k = pid_k.to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    k_mask = k < num_grads
    mask = k_mask[:, None] & column_mask(d, dim, ALIGN)[None, :]
    idx = tl.load(inverse_ptr + k, mask=k_mask, other=0)
    src = tl.multiple_of(k * dim, ALIGN)
    g = tl.load(grads_ptr + src[:, None] + d[None, :], mask=mask, other=0.0).to(tl.float32)
    dst = tl.multiple_of(idx * dim, ALIGN)
    tl.atomic_add(out_ptr + dst[:, None] + d[None, :], g, mask=mask, sem="relaxed")


@triton.jit(do_not_specialize=["weight_stride", "num_unique", "dim"])
def _update_kernel(
    weight_ptr,  # [R, D] storage (fp32 / bf16 / fp16), updated in place
    weight_stride,  # elements between consecutive rows of weight
    rows_ptr,  # int64 [U] unique local rows to update
    grad_ptr,  # float32 [U, D] merged gradient per unique row, contiguous
    m1_ptr,  # adagrad: float32 [R] row accumulator; adam: float32 [R, D] first moment
    m2_ptr,  # adam: float32 [R, D] second moment (unused otherwise)
    steps_ptr,  # adam: int64 [R] per-row step count (unused otherwise)
    num_unique,  # U
    dim,  # D
    lr,  # learning rate
    eps,  # denominator epsilon
    beta1,  # adam first-moment decay
    beta2,  # adam second-moment decay
    one_minus_beta1,  # 1 - beta1, rounded once on the host in float64
    one_minus_beta2,  # 1 - beta2, same
    # log2(beta1), so beta1^t = exp2(t * log2_beta1) needs no pow; a float64 argument: the bias
    # correction then rounds to the reference's float32 (row_factors)
    log2_beta1: tl.float64,
    log2_beta2: tl.float64,  # log2(beta2), same
    OPTIMIZER: tl.constexpr,  # SGD, ADAGRAD (row-wise) or ADAM (lazy) of sparse_optimizer_triton
    BLOCK_R: tl.constexpr,  # unique rows per program
    BLOCK_D: tl.constexpr,  # columns per step along the row (one of common_triton.BLOCK_DS)
    ALIGN: tl.constexpr,  # divides D and weight_stride (common_triton.row_align)
):
    pid = tl.program_id(0)
    u = pid.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    u_mask = u < num_unique
    row = tl.load(rows_ptr + u, mask=u_mask, other=0)
    # row offsets in weight, the state and the gradient
    w_base = tl.multiple_of(row * weight_stride, ALIGN)
    s_base = tl.multiple_of(row * dim, ALIGN)
    g_base = tl.multiple_of(u * dim, ALIGN)

    # per-row factors, computed before any column is written
    sq = tl.zeros([BLOCK_R], dtype=tl.float32)
    # row-wise Adagrad needs the whole row's mean(g^2) before any column moves
    if OPTIMIZER == ADAGRAD:
        for d0 in range(0, dim, BLOCK_D):
            d = d0 + tl.arange(0, BLOCK_D)
            mask = u_mask[:, None] & column_mask(d, dim, ALIGN)[None, :]
            g = tl.load(grad_ptr + g_base[:, None] + d[None, :], mask=mask, other=0.0)
            sq += tl.sum(g * g, axis=1)  # masked columns load as 0
    denom, bias1, bias2 = row_factors(
        row, sq, dim, m1_ptr, steps_ptr, OPTIMIZER, eps, log2_beta1, log2_beta2, u_mask
    )

    for d0 in range(0, dim, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        mask = u_mask[:, None] & column_mask(d, dim, ALIGN)[None, :]
        g = tl.load(grad_ptr + g_base[:, None] + d[None, :], mask=mask, other=0.0)
        update_columns(
            weight_ptr,
            w_base[:, None],
            m1_ptr,
            m2_ptr,
            s_base[:, None],
            d[None, :],
            mask,
            g,
            OPTIMIZER,
            lr,
            eps,
            beta1,
            beta2,
            one_minus_beta1,
            one_minus_beta2,
            denom[:, None],
            bias1[:, None],
            bias2[:, None],
        )


def _check_args(weight, rows, grads, state, optimizer) -> None:
    """The launcher's argument checks (ValueError)."""
    if weight.dim() != 2 or weight.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(
            f"weight must be 2-D fp32/bf16/fp16, got {weight.dtype} {tuple(weight.shape)}"
        )
    if weight.stride(1) != 1:
        raise ValueError("weight rows must be contiguous (stride(1) == 1)")
    if rows.dim() != 1 or rows.dtype != torch.int64:
        raise ValueError(f"rows must be 1-D int64, got {rows.dtype} {tuple(rows.shape)}")
    num_rows, dim = weight.shape
    if grads.dim() != 2 or grads.shape != (rows.numel(), dim) or not grads.is_floating_point():
        raise ValueError(
            f"grads must be float [K={rows.numel()}, D={dim}], got {grads.dtype} {tuple(grads.shape)}"
        )
    for name, t in (("rows", rows), ("grads", grads)):
        if t.device != weight.device:
            raise ValueError(f"{name} on {t.device}, weight on {weight.device}")
    optimizer.check_state(state, weight)


def _merge_duplicates(rows, grads, weight, block_d: int):
    """(unique rows [U], their summed gradients float32 [U, D], U): the dedup and _merge_kernel."""
    device, dim, num_rows = rows.device, grads.shape[1], weight.shape[0]
    one_table = torch.tensor([0, num_rows], dtype=torch.int64, device=device)
    # the dedup map lives as long as the weight, not as the per-call one_table
    unique_rows, _, inverse = unique_partition_triton(
        rows, one_table, torch.zeros(1, dtype=torch.int64, device=device), 1, key_space=num_rows,
        map_owner=weight,
    )  # fmt: skip
    num_unique = unique_rows.numel()
    merged = torch.zeros(num_unique, dim, dtype=torch.float32, device=device)
    merge_k = tile_rows(block_d, _MERGE_VALUES_PER_THREAD)
    _merge_kernel[(triton.cdiv(rows.numel(), merge_k), triton.cdiv(dim, block_d))](
        grads.contiguous(),
        inverse,
        merged,
        rows.numel(),
        dim,
        BLOCK_K=merge_k,
        BLOCK_D=block_d,
        ALIGN=row_align(dim),
        num_warps=NUM_WARPS,
    )
    return unique_rows, merged, num_unique


def _launch_update(weight, unique_rows, merged, num_unique: int, state, optimizer, block_d: int):
    """_update_kernel: each unique row updated once, BLOCK_R rows per program."""
    dim = weight.shape[1]
    align = row_align(dim, weight.stride(0))
    # one 16-byte vector of the weight a thread (4 fp32 or 8 bf16 columns; unaligned rows, read
    # element by element: 4): Adam's four operands stay under the register bound without spills
    block_r = tile_rows(block_d, vector_values(weight.dtype) if align > 1 else 4)
    # an optimizer without some state still passes tensors (its variant never reads them): the kernel
    # takes every pointer whatever the optimizer
    m1 = state.get("momentum1", unique_rows.new_empty(1, dtype=torch.float32))
    m2 = state.get("momentum2", unique_rows.new_empty(1, dtype=torch.float32))
    steps = state.get("row_steps", unique_rows.new_empty(1, dtype=torch.int64))
    optimizer_id, *hyper_parameters = kernel_args(optimizer)
    _update_kernel[(triton.cdiv(num_unique, block_r),)](
        weight,
        weight.stride(0),
        unique_rows,
        merged,
        m1,
        m2,
        steps,
        num_unique,
        dim,
        *hyper_parameters,
        OPTIMIZER=optimizer_id,
        BLOCK_R=block_r,
        BLOCK_D=block_d,
        ALIGN=align,
        num_warps=NUM_WARPS,
        # no fused multiply-adds: each product rounds as in the torch reference (the same bits)
        enable_fp_fusion=False,
    )


def sparse_update_triton(
    weight: torch.Tensor,
    rows: torch.Tensor,
    grads: torch.Tensor,
    state: dict[str, torch.Tensor],
    optimizer: SparseOptimizer,
    rows_unique: bool = False,
) -> None:
    """Same contract as kernels.sparse_update.sparse_update (in place)."""
    _check_args(weight, rows, grads, state, optimizer)
    num_rows, dim = weight.shape
    if rows.numel() == 0 or dim == 0:
        return
    block_d = column_block(dim)
    if rows_unique:
        unique_rows, merged, num_unique = rows, grads.float().contiguous(), rows.numel()
    else:
        unique_rows, merged, num_unique = _merge_duplicates(rows, grads, weight, block_d)
    _launch_update(weight, unique_rows, merged, num_unique, state, optimizer, block_d)


def compile_cases():
    """Calls covering every specialization this launcher makes (kernels.compile_check compiles them):
    each storage dtype x (BLOCK_D, ALIGN) class, every optimizer, merged or unique rows."""
    dims = compile_dims()  # every (BLOCK_D, ALIGN) class
    rows = torch.tensor([3, 3, 0, 5], dtype=torch.int64)
    for optimizer in (SparseOptimizer(name, 0.1) for name in SPARSE_OPTIMIZERS):
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            for dim in dims:

                def case(o=optimizer, t=dtype, d=dim):
                    weight = torch.zeros(8, d, dtype=t)
                    state = o.init_state(8, d, "cpu")
                    sparse_update_triton(weight, rows, torch.zeros(4, d), state, o)
                    sparse_update_triton(
                        weight, rows[1:].clone(), torch.zeros(3, d), state, o, rows_unique=True
                    )

                yield case
