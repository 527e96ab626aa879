"""kernels.ownership: each key's owner rank and storage row, Triton (one pass) against the torch
reference over irregular tables and world sizes."""

import pytest
import torch

from kernels.ownership import local_rows_reference, owner_of_reference
from tests.support.kernels import needs_triton, on

pytestmark = needs_triton


def _tables(num_tables: int, world_size: int, gen: torch.Generator):
    """Offsets of tables of 0 to 40 rows (empty ones among them), owners mixing table-wise
    (any rank) and row-wise (-1), and each table's first storage row."""
    rows = torch.randint(0, 41, (num_tables,), generator=gen)
    rows[0] = max(int(rows[0]), 1)  # at least one key
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), rows.cumsum(0)])
    owners = torch.randint(-1, world_size, (num_tables,), generator=gen)
    base = torch.randint(0, 1000, (num_tables,), generator=gen)
    return offsets, owners, base


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("num_tables", [1, 2, 7, 40])
@pytest.mark.parametrize("n", [0, 1, 33, 2500])
def test_triton_matches_reference(n, num_tables, world_size):
    from kernels.ownership_triton import local_rows_triton, owner_of_triton

    gen = torch.Generator().manual_seed(n * 101 + num_tables * 7 + world_size)
    offsets, owners, base = _tables(num_tables, world_size, gen)
    keys = torch.randint(0, int(offsets[-1]), (n,), generator=gen)
    keys[: min(n, num_tables)] = offsets[:-1][: min(n, num_tables)].clamp(max=int(offsets[-1]) - 1)
    expected = owner_of_reference(keys, offsets, owners, world_size)
    assert torch.equal(owner_of_triton(*on(keys, offsets, owners), world_size).cpu(), expected)
    expected = local_rows_reference(keys, offsets, owners, base, world_size)
    got = local_rows_triton(*on(keys, offsets, owners, base), world_size)
    assert torch.equal(got.cpu(), expected)


def test_bad_input_names_the_tensor():
    from kernels.ownership_triton import local_rows_triton, owner_of_triton

    offsets, owners = torch.tensor([0, 10]), torch.tensor([0])
    with pytest.raises(ValueError, match="keys must be int64"):
        owner_of_triton(torch.zeros(3, dtype=torch.int32), offsets, owners, 2)
    with pytest.raises(ValueError, match="T\\+1 offsets"):
        owner_of_triton(torch.zeros(3, dtype=torch.int64), offsets[:1], owners, 2)
    with pytest.raises(ValueError, match="local_base has 2 entries"):
        local_rows_triton(
            torch.zeros(3, dtype=torch.int64), offsets, owners, torch.zeros(2).long(), 2
        )
