"""Fused unique + partition-by-owner of embedding keys (input_dist's first step).

keys are global fused-row ids (table row offset + id), owners as in kernels.ownership.
"""

import torch

from kernels.dispatch import by_device
from kernels.ownership import owner_of_reference


def unique_partition_reference(
    keys: torch.Tensor,
    table_offsets: torch.Tensor,
    table_owner: torch.Tensor,
    world_size: int,
    key_space: int | None = None,
    padded: bool = False,
    counts_out: torch.Tensor | None = None,
):
    """Pure-torch oracle: unique keys in order of first occurrence, then stably grouped by owner
    (padded: followed by N - U zeros)."""
    if keys.numel() == 0:
        counts = torch.zeros(world_size, dtype=torch.int64, device=keys.device)
        return keys.new_empty(0), _into(counts, counts_out), keys.new_empty(0)
    uniq, inverse = torch.unique(keys, sorted=True, return_inverse=True)
    positions = torch.arange(keys.numel(), device=keys.device)
    first = torch.full_like(uniq, keys.numel()).scatter_reduce_(0, inverse, positions, "amin")
    order = torch.argsort(first)  # first occurrences are distinct positions: no ties
    # one owner: nothing to look up (and keys up to 2^63 - 1, past any offsets table, are fine)
    owner = (
        owner_of_reference(uniq[order], table_offsets, table_owner, world_size)
        if world_size > 1
        else torch.zeros_like(order)
    )
    order = order[torch.argsort(owner, stable=True)]
    position = torch.empty_like(order)
    position[order] = torch.arange(order.numel(), device=keys.device)
    counts = torch.bincount(owner, minlength=world_size)
    unique = uniq[order]
    if padded:
        unique = torch.cat([unique, unique.new_zeros(keys.numel() - unique.numel())])
    return unique, _into(counts, counts_out), position[inverse]


def _into(counts: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    return counts if out is None else out.copy_(counts)


def unique_partition(
    keys: torch.Tensor,
    table_offsets: torch.Tensor,
    table_owner: torch.Tensor,
    world_size: int,
    key_space: int | None = None,
    padded: bool = False,
    counts_out: torch.Tensor | None = None,
):
    """Deduplicate keys and group the unique ones by owner rank.

    Args:
        keys: int64 [N] global fused-row ids.
        table_offsets: int64 [T+1] first fused row of each table, then the total row count.
        table_owner: int64 [T] owner rank per table, -1 for row-wise tables.
        world_size: number of ranks W.
        key_space: an exclusive bound of the keys known on the host (the total row count), or None.
            Only a hint for the kernel's strategy (kernels/unique_partition_triton.py); results are the same.
        padded: return unique_keys with all N entries, the U = counts.sum() valid ones first (the
            rest: any value), so that the Triton path never syncs with the host (its output size
            would be U); the caller reads counts when it needs U (e.g. with the all-to-all counts).
        counts_out: int64 [W] contiguous, or None: counts are written there (and returned), e.g.
            into a buffer the caller reads with more in one host sync.
    Returns:
        unique_keys int64 [U] (padded: [N]): in order of first occurrence in keys, then stably grouped
            by owner (rank 0's first).
        counts int64 [W] number of unique keys per owner (a device tensor).
        inverse int64 [N] with unique_keys[inverse] == keys.
    The Triton kernel and this reference return identical tensors (padded: identical valid prefixes).
    """
    run = by_device(
        keys,
        reference=unique_partition_reference,
        triton="unique_partition_triton.unique_partition_triton",
    )
    return run(
        keys,
        table_offsets,
        table_owner,
        world_size,
        key_space,
        padded=padded,
        counts_out=counts_out,
    )
