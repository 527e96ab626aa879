"""Backward of pooling fused with the sparse optimizer, for a rank that owns every row it looks up (W = 1).

FBGEMM's table-batched embedding design: the values of the batch are grouped by the row they read
(a stable sort), each row's gradient is the sum over its values of their bag's pooled gradient
(times 1/len for mean bags), and the optimizer updates the row right there. The per-row gradient
never round-trips through memory, no [U, D] gradient is materialized, and the lookup counts and
last-update step of each row are written in the same pass.

Same results as pool_backward (over the unique rows) followed by sparse_update(rows_unique=True)
and the freq / last_step bookkeeping of embedding.ShardedEmbeddingCollection, which is what the
reference below does (pool_backward_reference, then SparseOptimizer.update_rows).
"""

import torch

from kernels.dispatch import by_device
from kernels.pool_backward import pool_backward_reference
from kernels.sparse_optimizer import SparseOptimizer


def pool_backward_update_reference(
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
):
    rows, inverse = torch.unique(value_rows, return_inverse=True)
    grad = pool_backward_reference(grad_pooled, inverse, offsets, feature_mean, rows.numel())
    freq.index_add_(0, rows, torch.bincount(inverse, minlength=rows.numel()))
    last_step[rows] = step
    optimizer.update_rows(weight, rows, grad, state)
    return rows.numel()


def pool_backward_update(
    weight: torch.Tensor,
    state: dict[str, torch.Tensor],
    freq: torch.Tensor,
    last_step: torch.Tensor,
    step: int,
    value_rows: torch.Tensor,
    offsets: torch.Tensor,
    grad_pooled: torch.Tensor,
    feature_mean: torch.Tensor,
    optimizer: SparseOptimizer,
) -> int:
    """Apply the sparse optimizer to every row the batch looked up, with the gradient of its pooled output.

    Args:
        weight: [R, D] local storage (fp32, or bf16/fp16 with fp32 math), updated in place.
        state: tensors from optimizer.init_state, updated in place.
        freq: int64 [R] lookups per row, += the batch's lookups of each row.
        last_step: int64 [R] step of each row's last update, set to ``step`` for every updated row.
        step: this update's step number.
        value_rows: int64 [N] local row read by each value of the batch (values in bag order, bags feature-major).
        offsets: int64 [F*B+1] bag boundaries into value_rows.
        grad_pooled: [B, F, D] gradient of the pooled output (as for kernels.pool_backward).
        feature_mean: bool/int [F], true where feature f is mean-pooled.
        optimizer: the optimizer and its hyper-parameters (lr: the rate in force).
    Returns:
        the number of distinct rows updated.
    """
    run = by_device(
        weight,
        reference=pool_backward_update_reference,
        triton="pool_backward_update_triton.pool_backward_update_triton",
    )
    return run(
        weight,
        state,
        freq,
        last_step,
        step,
        value_rows,
        offsets,
        grad_pooled,
        feature_mean,
        optimizer,
    )
