"""Owner-side backward: merge duplicate rows' gradients and apply the sparse optimizer in place.

No dense gradient of the table is ever materialized: only the touched rows are read and
written. Optimizers follow FBGEMM's fused table-batched embedding:

- ``sgd``:      w -= lr * g
- ``adagrad``:  row-wise: m1[r] += mean_d(g^2); w -= lr * g / (sqrt(m1[r]) + eps)
- ``adam``:     lazy: only touched rows advance; per-row step t[r] += 1;
                m1 = b1*m1 + (1-b1)*g; m2 = b2*m2 + (1-b2)*g^2;
                w -= lr * (m1 / (1-b1^t)) / (sqrt(m2 / (1-b2^t)) + eps)

Optimizer math is float32 whatever the storage dtype of ``weight``.
"""

import torch

from kernels._dispatch import use_triton

SPARSE_OPTIMIZERS = ("sgd", "adagrad", "adam")


def init_sparse_state(optimizer: str, num_rows: int, dim: int, device) -> dict[str, torch.Tensor]:
    """Zero optimizer state for a storage of num_rows x dim."""
    if optimizer == "sgd":
        return {}
    if optimizer == "adagrad":
        return {"momentum1": torch.zeros(num_rows, dtype=torch.float32, device=device)}
    if optimizer == "adam":
        return {
            "momentum1": torch.zeros(num_rows, dim, dtype=torch.float32, device=device),
            "momentum2": torch.zeros(num_rows, dim, dtype=torch.float32, device=device),
            "row_steps": torch.zeros(num_rows, dtype=torch.int64, device=device),
        }
    raise ValueError(f"unknown sparse optimizer {optimizer!r}; expected one of {SPARSE_OPTIMIZERS}")


def merge_duplicates(rows: torch.Tensor, grads: torch.Tensor):
    """Unique rows and the sum of their gradients."""
    unique_rows, inverse = torch.unique(rows, return_inverse=True)
    merged = torch.zeros(unique_rows.numel(), grads.shape[1], dtype=torch.float32, device=grads.device)
    merged.index_add_(0, inverse, grads.float())
    return unique_rows, merged


def sparse_update_reference(weight, rows, grads, state, optimizer, lr, eps=1e-8, beta1=0.9, beta2=0.999,
                            rows_unique=False):
    if rows.numel() == 0:
        return
    rows, g = (rows, grads.float()) if rows_unique else merge_duplicates(rows, grads)
    w = weight.index_select(0, rows).float()
    if optimizer == "sgd":
        w -= lr * g
    elif optimizer == "adagrad":
        m1 = state["momentum1"].index_select(0, rows) + (g * g).mean(dim=1)
        state["momentum1"].index_copy_(0, rows, m1)
        w -= lr * g / (m1.sqrt() + eps)[:, None]
    elif optimizer == "adam":
        t = state["row_steps"].index_select(0, rows) + 1
        m1 = beta1 * state["momentum1"].index_select(0, rows) + (1 - beta1) * g
        m2 = beta2 * state["momentum2"].index_select(0, rows) + (1 - beta2) * g * g
        state["row_steps"].index_copy_(0, rows, t)
        state["momentum1"].index_copy_(0, rows, m1)
        state["momentum2"].index_copy_(0, rows, m2)
        tf = t.float()[:, None]
        bias1 = 1 - beta1 ** tf
        bias2 = 1 - beta2 ** tf
        w -= lr * (m1 / bias1) / ((m2 / bias2).sqrt() + eps)
    else:
        raise ValueError(f"unknown sparse optimizer {optimizer!r}; expected one of {SPARSE_OPTIMIZERS}")
    weight.index_copy_(0, rows, w.to(weight.dtype))


def sparse_update(weight: torch.Tensor, rows: torch.Tensor, grads: torch.Tensor,
                  state: dict[str, torch.Tensor], optimizer: str, lr: float, eps: float = 1e-8,
                  beta1: float = 0.9, beta2: float = 0.999, rows_unique: bool = False) -> None:
    """Apply one optimizer step to the touched rows of weight, in place.

    Args:
        weight: [R, D] local storage (float32, or bf16/fp16 with float32 math).
        rows: int64 [K] local row of each gradient; duplicates are summed first.
        grads: float32 [K, D].
        state: tensors from init_sparse_state, updated in place.
        optimizer: one of SPARSE_OPTIMIZERS.
        lr, eps, beta1, beta2: hyper-parameters (beta* for adam only).
        rows_unique: the caller guarantees no duplicate rows (the sharded backward merges across
            senders already), so the dedup + merge pass is skipped.
    """
    if use_triton(weight):
        from kernels.sparse_update_triton import sparse_update_triton
        return sparse_update_triton(weight, rows, grads, state, optimizer, lr, eps, beta1, beta2, rows_unique)
    return sparse_update_reference(weight, rows, grads, state, optimizer, lr, eps, beta1, beta2, rows_unique)
