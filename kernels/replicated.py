"""Replicated tables' gradients at W > 1: summed over ranks densely, then merged with the rest.

Replicated tables take the first ``n`` storage rows on every rank. The owner's received gradient
entries (rows, grads, counts) for those rows go into a dense float32 [n, D + 1] buffer, the
lookup count in the last column (exact below 2^24 per batch), which one all-reduce sums over
ranks (scatter_replicated). Then append_replicated hands merge_update one entry list: the received
entries, with those of replicated rows neutralized (gradient times 0, count 0: their sum is in
the dense rows), followed by one entry per replicated row from the summed buffer (a row nobody
looked up has count 0: merge_update leaves it untouched). The Triton side (one kernel each,
kernels.replicated_triton) reads strided gradients and counts (a received message's columns).
"""

import torch

from kernels.dispatch import by_device


def scatter_replicated_reference(rows, grads, counts, num_replicated: int) -> torch.Tensor:
    n, dim = num_replicated, grads.shape[1]
    is_rep = rows < n
    # a rank asks itself for each replicated row at most once (input_dist dedups): no duplicates,
    # a deterministic index_put_; other tables' rows go to a scratch row n
    dense = torch.zeros(n + 1, dim + 1, dtype=torch.float32, device=grads.device)
    dense.index_put_(
        (torch.where(is_rep, rows, n),), torch.cat([grads.float(), counts.float()[:, None]], 1)
    )
    return dense[:n]


def scatter_replicated(
    rows: torch.Tensor, grads: torch.Tensor, counts: torch.Tensor, num_replicated: int
) -> torch.Tensor:
    """The received entries of the replicated rows as a dense buffer; no host sync.

    Args:
        rows: int64 [K] storage row of each received gradient; each row < num_replicated at most once.
        grads: float32 [K, D] (any row stride) the gradients.
        counts: int32/int64 [K] (any stride) the lookups behind each gradient.
        num_replicated: n, the replicated rows (storage rows 0..n-1).
    Returns:
        float32 [n, D + 1], contiguous: row r holds the gradient and (as a float) the count of the
        entry for row r, zeros where there is none.
    """
    run = by_device(
        rows,
        reference=scatter_replicated_reference,
        triton="replicated_triton.scatter_replicated_triton",
    )
    return run(rows, grads, counts, num_replicated)


def append_replicated_reference(rows, grads, counts, dense):
    n, dim = dense.shape[0], grads.shape[1]
    is_rep = rows < n
    return (
        torch.cat([rows, torch.arange(n, device=rows.device)]),
        torch.cat([grads.float() * (~is_rep).float()[:, None], dense[:, :dim]]),
        torch.cat([torch.where(is_rep, 0, counts.int()), dense[:, dim].round().int()]),
    )


def append_replicated(
    rows: torch.Tensor, grads: torch.Tensor, counts: torch.Tensor, dense: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """merge_update's entries: the K received ones, then one per replicated row (module docstring).

    Args:
        rows, grads, counts: as for scatter_replicated.
        dense: float32 [n, D + 1] contiguous, scatter_replicated's buffer summed over ranks.
    Returns:
        (int64 [K + n] rows, float32 [K + n, D] contiguous gradients, int32 [K + n] counts): the
        received entries of replicated rows with gradient times 0 and count 0, then row r of dense
        as the entry of storage row r.
    """
    run = by_device(
        rows,
        reference=append_replicated_reference,
        triton="replicated_triton.append_replicated_triton",
    )
    return run(rows, grads, counts, dense)
