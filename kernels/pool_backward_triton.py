"""Triton backward of gather_pool: gradient per unique key without a dense table gradient.

One program per (BAGS consecutive bags, D-block) loads the bags' pooled gradients once, scales
them (1/len for mean features) and atomically adds them into grad_unique[inverse[i]] for each
value i, one value per bag per step. Work and traffic are O(N * D) with no sort and no [N, D]
intermediate. (One rank uses kernels/pool_backward_update_triton.py instead: no atomics.)

Float atomics make the summation order depend on scheduling, so results are deterministic
only up to fp32 round-off (a key used k times sees k! possible orders). The project's
equivalence tests compare to fp32 round-off, which this satisfies.
"""

import torch
import triton
import triton.language as tl

from kernels.common_triton import check_bags, column_block, column_mask, row_align
from kernels.gather_pool_triton import ROW_SIZES, bags_per_program


@triton.jit(do_not_specialize=ROW_SIZES)
def _pool_backward_kernel(
    grad_ptr,  # [B, F, D] gradient of the pooled output, any float dtype, contiguous
    inverse_ptr,  # int64 [N] unique row of each value; values grouped by bag, bags feature-major
    offsets_ptr,  # int64 [F*B+1] bag boundaries into inverse
    mean_ptr,  # int32 [F] 1 where feature f is mean-pooled
    out_ptr,  # float32 [U, D] out, zero-initialized, accumulated with atomics
    batch_size,  # B
    num_features,  # F
    dim,  # D
    BAGS: tl.constexpr,  # bags per program (gather_pool_triton.bags_per_program)
    BLOCK_D: tl.constexpr,  # columns per program (one of common_triton.BLOCK_DS)
    ALIGN: tl.constexpr,  # divides D (row_align)
):
    pid_b = tl.program_id(0)
    pid_d = tl.program_id(1)
    bag = pid_b.to(tl.int64) * BAGS + tl.arange(0, BAGS)
    bag_mask = bag < batch_size * num_features
    start = tl.load(offsets_ptr + bag, mask=bag_mask, other=0)
    length = tl.load(offsets_ptr + bag + 1, mask=bag_mask, other=0) - start
    f = bag // batch_size
    b = bag % batch_size
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = column_mask(d, dim, ALIGN)
    is_mean = tl.load(mean_ptr + f, mask=bag_mask, other=0) != 0
    scale = tl.where(is_mean & (length > 0), 1.0 / tl.maximum(length, 1).to(tl.float32), 1.0)
    src = tl.multiple_of((b * num_features + f) * dim, ALIGN)
    g = tl.load(
        grad_ptr + src[:, None] + d[None, :], mask=bag_mask[:, None] & d_mask[None, :], other=0.0
    )
    g = g.to(tl.float32) * scale[:, None]

    for j in range(0, tl.max(length)):
        v_mask = j < length
        idx = tl.load(inverse_ptr + start + j, mask=v_mask, other=0)
        # a key repeated in one bag or in two bags of the program hits one address twice: atomics add both
        dst = tl.multiple_of(idx * dim, ALIGN)
        tl.atomic_add(
            out_ptr + dst[:, None] + d[None, :],
            g,
            mask=v_mask[:, None] & d_mask[None, :],
            sem="relaxed",
        )


def pool_backward_triton(
    grad_pooled: torch.Tensor,
    inverse: torch.Tensor,
    offsets: torch.Tensor,
    feature_mean: torch.Tensor,
    num_unique: int,
) -> torch.Tensor:
    """Same contract as kernels.pool_backward.pool_backward: -> float32 [U, D]."""
    if grad_pooled.dim() != 3 or not grad_pooled.is_floating_point():
        raise ValueError(
            f"grad_pooled must be a 3-D float tensor [B, F, D], got {grad_pooled.dtype} "
            f"{tuple(grad_pooled.shape)}"
        )
    batch_size, num_features, dim = grad_pooled.shape
    if feature_mean.numel() != num_features:
        raise ValueError(
            f"feature_mean has {feature_mean.numel()} entries, grad_pooled has F={num_features}"
        )
    mean = check_bags(inverse, offsets, batch_size, feature_mean, grad_pooled.device)
    out = torch.zeros(num_unique, dim, dtype=torch.float32, device=grad_pooled.device)
    num_bags = num_features * batch_size
    if num_bags == 0 or dim == 0 or num_unique == 0:
        return out
    block_d = column_block(dim)
    bags = bags_per_program(block_d)
    grid = (triton.cdiv(num_bags, bags), triton.cdiv(dim, block_d))
    _pool_backward_kernel[grid](
        grad_pooled.contiguous(),
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
    )
    return out


def compile_cases():
    """Calls covering every specialization this launcher makes (kernels.compile_check compiles them)."""
    from kernels.gather_pool_triton import COMPILE_DIMS

    offsets = torch.tensor([0, 2, 2, 5, 6], dtype=torch.int64)  # F=2, B=2, an empty bag
    inverse = torch.tensor([0, 1, 2, 0, 3, 4], dtype=torch.int64)
    mean = torch.tensor([True, False])
    for dtype in (torch.float32, torch.bfloat16):
        for dim in COMPILE_DIMS:
            yield lambda d=dim, t=dtype: pool_backward_triton(
                torch.zeros(2, 2, d, dtype=t), inverse, offsets, mean, 5
            )
