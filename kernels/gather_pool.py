"""Forward of the embedding lookup: owner-side row lookup and requester-side pooling."""

import torch

from kernels.dispatch import by_device


def lookup_reference(
    weight: torch.Tensor, rows: torch.Tensor, out_dtype: torch.dtype | None = None
) -> torch.Tensor:
    return weight.index_select(0, rows).to(out_dtype or torch.float32)


def lookup(
    weight: torch.Tensor, rows: torch.Tensor, out_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Rows of the owner's local storage: weight [R, D] (any float dtype), rows int64 [K]
    -> [K, D] in out_dtype (float32, bfloat16 or float16; None: float32). The Triton kernel reads
    each row and writes it cast in one pass (no separate cast of the [K, D] result); both paths give
    the same bits (torch's casts: exact widening, narrowing rounded to nearest even; the Triton
    interpreter alone truncates to bf16)."""
    run = by_device(weight, reference=lookup_reference, triton="gather_pool_triton.lookup_triton")
    return run(weight, rows, out_dtype)


def bag_layout(offsets: torch.Tensor, batch_size: int, feature_mean: torch.Tensor):
    """Per value: its bag index; per bag: its length and pooling scale (1 or 1/len)."""
    lengths = offsets[1:] - offsets[:-1]
    bag_of_value = torch.repeat_interleave(
        torch.arange(lengths.numel(), device=offsets.device), lengths
    )
    num_features = feature_mean.numel()
    mean_per_bag = feature_mean.to(torch.bool).repeat_interleave(batch_size)
    scale = torch.where(
        mean_per_bag,
        1.0 / lengths.clamp(min=1).float(),
        torch.ones_like(lengths, dtype=torch.float32),
    )
    assert lengths.numel() == num_features * batch_size
    return bag_of_value, lengths, scale


def gather_pool_reference(
    rows: torch.Tensor,
    inverse: torch.Tensor,
    offsets: torch.Tensor,
    batch_size: int,
    feature_mean: torch.Tensor,
) -> torch.Tensor:
    num_features = feature_mean.numel()
    dim = rows.shape[1]
    bag_of_value, _, scale = bag_layout(offsets, batch_size, feature_mean)
    pooled = torch.zeros(num_features * batch_size, dim, dtype=torch.float32, device=rows.device)
    # rows may be a whole table
    pooled.index_add_(0, bag_of_value, rows.index_select(0, inverse).float())
    pooled *= scale[:, None]
    # bags are feature-major (f * B + b); the output is sample-major [B, F, D]
    return pooled.view(num_features, batch_size, dim).transpose(0, 1).contiguous()


def gather_pool(
    rows: torch.Tensor,
    inverse: torch.Tensor,
    offsets: torch.Tensor,
    batch_size: int,
    feature_mean: torch.Tensor,
) -> torch.Tensor:
    """Pool the rows of each bag.

    Args:
        rows: [U, D] one row per unique key (as returned by output_dist).
        inverse: int64 [N] row of each value of the batch (values are feature-major bags).
        offsets: int64 [F*B+1] bag boundaries; bag f*B+b is feature f of sample b.
        batch_size: B.
        feature_mean: bool/int [F], true where feature f is mean-pooled (else sum).
    Returns:
        float32 [B, F, D]; empty bags give zeros.
    """
    run = by_device(
        rows, reference=gather_pool_reference, triton="gather_pool_triton.gather_pool_triton"
    )
    return run(rows, inverse, offsets, batch_size, feature_mean)
