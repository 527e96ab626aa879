"""Segment sums fused with the sparse optimizer: the W = 1 backward and the owner's merge at W > 1.

FBGEMM's table-batched embedding design: the values of the batch are grouped by the row they read
(a stable sort), each row's gradient is the sum over its values of their bag's pooled gradient
(times 1/len for mean bags), and the optimizer updates the row right there. The per-row gradient
never round-trips through memory, no [U, D] gradient is materialized, and the lookup counts and
last-update step of each row are written in the same pass.

Same results as pool_backward (over the unique rows) followed by sparse_update(rows_unique=True)
and the freq / last_step bookkeeping of embedding.ShardedEmbeddingCollection, which is what the
reference below does (pool_backward_reference, then SparseOptimizer.update_rows).

merge_update is the owner's half at W > 1: the gradient rows received from every rank (a row may
come from several) are summed per row in entry order and each row gets one step, in the same
kernel (kernels.pool_backward_update_triton). Both return the number of rows updated as an int64
tensor on the weight's device whose sum is that number (the Triton path: a count per program, summed by
no launch of its own; the reference: a 0-dim tensor, its own sum). Summing and reading it is the caller's
business, when it needs it (embedding.byte_model, at log steps).
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
    return _count(rows.numel(), weight.device)


def _count(num_rows: int, device) -> torch.Tensor:
    return torch.full((), num_rows, dtype=torch.int64, device=device)


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
) -> torch.Tensor:
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
        int64 tensor on weight's device whose sum is the number of distinct rows updated.
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


def merge_update_reference(
    weight,
    state,
    freq,
    last_step,
    step,
    rows,
    grads,
    counts,
    optimizer: SparseOptimizer,
    scale=None,
):
    g = grads.float() if scale is None else grads.float() * scale[:, None]
    unique_rows, inverse = torch.unique(rows, return_inverse=True)
    merged = torch.zeros(unique_rows.numel(), g.shape[1], dtype=torch.float32, device=g.device)
    merged.index_add_(0, inverse, g)
    total = torch.zeros(unique_rows.numel(), dtype=torch.int64, device=g.device)
    total.index_add_(0, inverse, counts.long())
    looked_up = total > 0
    unique_rows, merged, total = unique_rows[looked_up], merged[looked_up], total[looked_up]
    freq.index_add_(0, unique_rows, total)
    last_step[unique_rows] = step
    optimizer.update_rows(weight, unique_rows, merged, state)
    return _count(unique_rows.numel(), weight.device)


def merge_update(
    weight: torch.Tensor,
    state: dict[str, torch.Tensor],
    freq: torch.Tensor,
    last_step: torch.Tensor,
    step: int,
    rows: torch.Tensor,
    grads: torch.Tensor,
    counts: torch.Tensor,
    optimizer: SparseOptimizer,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """The owner's update: sum the gradient rows received for each row, then one optimizer step.

    Args:
        weight, state, freq, last_step, step, optimizer: as for pool_backward_update.
        rows: int64 [K] storage row of each received gradient; duplicates allowed (a row looked
            up by several ranks), summed in entry order.
        grads: float32 [K, D] the received gradients.
        counts: int32/int64 [K] lookups behind each gradient; freq[row] += their sum. A row
            whose counts sum to 0 is not touched at all (weight, state, freq, last_step).
        scale: optional float32 [K], a factor per gradient row (applied before the sum).
    Returns:
        int64 tensor on weight's device whose sum is the number of distinct rows updated.
    """
    run = by_device(
        weight,
        reference=merge_update_reference,
        triton="pool_backward_update_triton.merge_update_triton",
    )
    return run(weight, state, freq, last_step, step, rows, grads, counts, optimizer, scale)
