"""Backward of gather_pool: one gradient row per unique key (segment sum over its uses)."""

import torch

from kernels.dispatch import by_device
from kernels.gather_pool import bag_layout


def pool_backward_reference(
    grad_pooled: torch.Tensor,
    inverse: torch.Tensor,
    offsets: torch.Tensor,
    feature_mean: torch.Tensor,
    num_unique: int,
    scale: float = 1.0,
    out: torch.Tensor | None = None,
    lookups: torch.Tensor | None = None,
) -> torch.Tensor:
    batch_size, num_features, dim = grad_pooled.shape
    bag_of_value, _, bag_scale = bag_layout(offsets, batch_size, feature_mean)
    grad_bags = (
        grad_pooled.float().transpose(0, 1).reshape(num_features * batch_size, dim)
        * bag_scale[:, None]
    )
    grad_unique = torch.zeros(num_unique, dim, dtype=torch.float32, device=grad_pooled.device)
    grad_unique.index_add_(0, inverse, grad_bags.index_select(0, bag_of_value))
    if scale != 1.0:
        grad_unique *= scale
    if lookups is not None:
        lookups.zero_()
        lookups.index_add_(0, inverse, torch.ones_like(inverse, dtype=lookups.dtype))
    if out is None:
        return grad_unique
    return out.copy_(grad_unique)


def pool_backward(
    grad_pooled: torch.Tensor,
    inverse: torch.Tensor,
    offsets: torch.Tensor,
    feature_mean: torch.Tensor,
    num_unique: int,
    scale: float = 1.0,
    out: torch.Tensor | None = None,
    lookups: torch.Tensor | None = None,
) -> torch.Tensor:
    """Gradient of gather_pool with respect to its rows.

    Args:
        grad_pooled: [B, F, D] gradient of the pooled output.
        inverse, offsets, feature_mean: as given to gather_pool.
        num_unique: U, the number of rows gather_pool received (U <= N).
        scale: multiplies every sum (the caller's 1/W, folded into the same pass).
        out: optional [U, D] float (fp32/bf16/fp16) destination with contiguous rows
            (stride(1) == 1, any stride(0) >= D): written in its dtype, every row (0 where no
            value maps to it); e.g. the exchange buffer.
        lookups: optional int32 [U] (may be strided): set to each unique key's number of values.
    Returns:
        out, or a new float32 [U, D]: scale * the sum over every use of a unique key of its bag's
        gradient (times 1/len for mean-pooled bags), summed in value order.
    """
    run = by_device(
        grad_pooled,
        reference=pool_backward_reference,
        triton="pool_backward_triton.pool_backward_triton",
    )
    return run(grad_pooled, inverse, offsets, feature_mean, num_unique, scale, out, lookups)
