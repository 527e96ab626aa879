"""Owner rank of global fused-row keys, shared by unique_partition and its Triton launcher.

keys are global fused-row ids (table row offset + id). Each key's owner rank comes from
its table: ``table_owner[t] >= 0`` means the whole table lives on that rank (table-wise,
or replicated with the local rank as owner); ``-1`` means row-wise, owner = row % W.
"""

import torch


def owner_of(
    keys: torch.Tensor, table_offsets: torch.Tensor, table_owner: torch.Tensor, world_size: int
) -> torch.Tensor:
    """Owner rank of each key (int64, same shape as keys)."""
    table = torch.searchsorted(table_offsets, keys, right=True) - 1
    row = keys - table_offsets[table]
    owner = table_owner[table]
    return torch.where(owner >= 0, owner, row % world_size)
