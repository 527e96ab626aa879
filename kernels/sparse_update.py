"""Owner-side backward: merge duplicate rows' gradients and apply the sparse optimizer in place.

No dense gradient of the table is ever materialized: only the touched rows are read and
written. The optimizers, their state and math: kernels.sparse_optimizer.
"""

import torch

from kernels.dispatch import by_device
from kernels.sparse_optimizer import SparseOptimizer


def merge_duplicates(rows: torch.Tensor, grads: torch.Tensor):
    """Unique rows and the sum of their gradients."""
    unique_rows, inverse = torch.unique(rows, return_inverse=True)
    merged = torch.zeros(
        unique_rows.numel(), grads.shape[1], dtype=torch.float32, device=grads.device
    )
    merged.index_add_(0, inverse, grads.float())
    return unique_rows, merged


def sparse_update_reference(
    weight, rows, grads, state, optimizer: SparseOptimizer, rows_unique=False
):
    if rows.numel() == 0:
        return
    rows, g = (rows, grads.float()) if rows_unique else merge_duplicates(rows, grads)
    optimizer.update_rows(weight, rows, g, state)


def sparse_update(
    weight: torch.Tensor,
    rows: torch.Tensor,
    grads: torch.Tensor,
    state: dict[str, torch.Tensor],
    optimizer: SparseOptimizer,
    rows_unique: bool = False,
) -> None:
    """Apply one optimizer step to the touched rows of weight, in place.

    Args:
        weight: [R, D] local storage (float32, or bf16/fp16 with float32 math).
        rows: int64 [K] local row of each gradient; duplicates are summed first.
        grads: float32 [K, D].
        state: tensors from optimizer.init_state, updated in place.
        optimizer: the optimizer and its hyper-parameters (lr: the rate in force).
        rows_unique: the caller guarantees no duplicate rows (the sharded backward merges across
            senders already), so the dedup + merge pass is skipped.
    """
    run = by_device(
        weight,
        reference=sparse_update_reference,
        triton="sparse_update_triton.sparse_update_triton",
    )
    run(weight, rows, grads, state, optimizer, rows_unique)
