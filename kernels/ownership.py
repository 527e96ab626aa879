"""Owner rank and local storage row of global fused-row keys (input_dist's grouping, the owner's
lookup, dynamic tables' static keys).

keys are global fused-row ids (table row offset + id). Each key's owner rank comes from
its table: ``table_owner[t] >= 0`` means the whole table lives on that rank (table-wise,
or replicated with the local rank as owner); ``-1`` means row-wise, owner = row % W, stored as
local row row // W of the owner. The Triton side (kernels.ownership_triton) finds each key's table
by a binary search over the offsets in one pass instead of a searchsorted and a chain of gathers.
"""

import torch

from kernels.dispatch import by_device


def owner_of_reference(
    keys: torch.Tensor, table_offsets: torch.Tensor, table_owner: torch.Tensor, world_size: int
) -> torch.Tensor:
    table = torch.searchsorted(table_offsets, keys, right=True) - 1
    row = keys - table_offsets[table]
    owner = table_owner[table]
    return torch.where(owner >= 0, owner, row % world_size)


def owner_of(
    keys: torch.Tensor, table_offsets: torch.Tensor, table_owner: torch.Tensor, world_size: int
) -> torch.Tensor:
    """Owner rank of each key (int64, same shape as keys).

    Args:
        keys: int64 [N] global fused-row ids, 0 <= key < table_offsets[-1].
        table_offsets: int64 [T+1] first fused row of each table, then the total row count.
        table_owner: int64 [T] owner rank per table, -1 for row-wise tables.
        world_size: number of ranks W.
    """
    run = by_device(keys, reference=owner_of_reference, triton="ownership_triton.owner_of_triton")
    return run(keys, table_offsets, table_owner, world_size)


def local_rows_reference(
    keys: torch.Tensor,
    table_offsets: torch.Tensor,
    table_owner: torch.Tensor,
    local_base: torch.Tensor,
    world_size: int,
) -> torch.Tensor:
    t = torch.searchsorted(table_offsets, keys, right=True) - 1
    row = keys - table_offsets[t]
    return local_base[t] + torch.where(table_owner[t] < 0, row // world_size, row)


def local_rows(
    keys: torch.Tensor,
    table_offsets: torch.Tensor,
    table_owner: torch.Tensor,
    local_base: torch.Tensor,
    world_size: int,
) -> torch.Tensor:
    """Storage row on its owner of each key (int64, same shape as keys): ``local_base[t]`` plus the
    key's row (row-wise tables: row // W). Arguments as for owner_of; local_base int64 [T] is
    the first storage row of each table on the owner."""
    run = by_device(
        keys, reference=local_rows_reference, triton="ownership_triton.local_rows_triton"
    )
    return run(keys, table_offsets, table_owner, local_base, world_size)
