"""kernels.find_or_insert: the Triton kernel (interpreted on CPU, compiled on a GPU) against the torch reference.

Slots of existing keys and the inserted flags must be identical; which free slot a new key takes may
differ (the GPU resolves contention by CAS order), so inserts are compared as tables: the same set of
keys, every key at the slot returned for it, nothing duplicated.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from kernels.hash_table import EMPTY, TOMBSTONE, find_or_insert, find_or_insert_reference, home_slot  # noqa: E402
from kernels.hash_table_triton import BLOCK, find_or_insert_triton  # noqa: E402
from tests.support.kernels import DEVICE, needs_triton  # noqa: E402


def make_keys(pattern: str, n: int, capacity: int, gen: torch.Generator) -> torch.Tensor:
    if pattern == "sequential":
        return torch.arange(n, dtype=torch.int64)
    if pattern == "random63":  # raw 64-bit hashes: the whole non-negative int64 range
        return torch.unique(torch.randint(0, 2**63 - 1, (n,), generator=gen, dtype=torch.int64))[:n]
    # ids that differ only above bit 40: a weak hash would put them all in one slot
    if pattern == "high_bits":
        return torch.arange(1, n + 1, dtype=torch.int64) << 40
    # every key has the same home slot: one long probe chain, wrapping around
    if pattern == "one_home":
        candidates = torch.arange(200_000, dtype=torch.int64)
        same = candidates[home_slot(candidates, capacity - 1) == capacity - 2]
        return same[:n]
    raise AssertionError(pattern)


def make_table(state: str, capacity: int, keys: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A table that already holds other keys, some of the query keys and tombstones (state "mixed"), or none."""
    table = torch.full((capacity,), EMPTY, dtype=torch.int64)
    if state == "empty":
        return table
    others = torch.randint(
        2**50, 2**51, (capacity // 4,), generator=gen, dtype=torch.int64
    ).unique()
    present = keys[torch.rand(keys.numel(), generator=gen) < 0.5]
    find_or_insert_reference(table, torch.cat([others, present]))
    # remove some of each: tombstones in the middle of probe chains, removed query keys to reinsert
    removed = torch.rand(capacity, generator=gen) < 0.3
    table[removed & (table != EMPTY)] = TOMBSTONE
    return table


def check(table_before, keys, insert, got):
    ref_table = table_before.clone()
    ref_slots, ref_inserted = find_or_insert_reference(ref_table, keys, insert)
    (slots, inserted), table = got
    slots, inserted, table = slots.cpu(), inserted.cpu(), table.cpu()
    assert slots.dtype == torch.int64 and inserted.dtype == torch.bool
    assert torch.equal(inserted, ref_inserted)
    existing = ~ref_inserted
    # found (or absent) keys: exactly the reference's slots
    assert torch.equal(slots[existing], ref_slots[existing])
    placed = slots >= 0
    assert torch.equal(placed, ref_slots >= 0)
    assert torch.equal(table[slots[placed]], keys[placed])  # each key where it was reported
    # same keys, tombstones and free slots
    assert torch.equal(table.sort().values, ref_table.sort().values)
    live = table[table >= 0]
    assert live.unique().numel() == live.numel()  # nothing inserted twice
    if not insert:
        assert torch.equal(table, table_before)


@needs_triton
@pytest.mark.parametrize("insert", [False, True])
@pytest.mark.parametrize("state", ["empty", "mixed"])
# last: several programs
@pytest.mark.parametrize("n,capacity", [(0, 16), (1, 16), (7, 16), (BLOCK + 45, 1024)])
@pytest.mark.parametrize("pattern", ["sequential", "random63", "high_bits", "one_home"])
def test_find_or_insert_matches_reference(pattern, n, capacity, state, insert):
    gen = torch.Generator().manual_seed(n * 7 + capacity)
    keys = make_keys(pattern, min(n, capacity // 2), capacity, gen)
    table = make_table(state, capacity, keys, gen)
    device_table = table.clone().to(DEVICE)  # .to() on the same device would alias the original
    got = find_or_insert_triton(device_table, keys.to(DEVICE), insert)
    check(table, keys, insert, (got, device_table))


@needs_triton
def test_full_table_places_every_key_it_can_and_reports_the_rest():
    keys = torch.arange(20, dtype=torch.int64) * 1_000_003
    table = torch.full((16,), EMPTY, dtype=torch.int64)
    slots, inserted = find_or_insert_triton(table.to(DEVICE), keys.to(DEVICE))
    # probing wraps around the whole table
    assert int((slots >= 0).sum()) == 16 == int(inserted.sum())
    ref_slots, _ = find_or_insert_reference(table.clone(), keys)
    assert int((ref_slots >= 0).sum()) == 16
    # a lookup in a table with no EMPTY slot still ends (bounded probing)
    full = torch.arange(16, dtype=torch.int64)
    slots, _ = find_or_insert_triton(full.to(DEVICE), torch.tensor([99], device=DEVICE), False)
    assert slots.tolist() == [-1]


def test_reference_against_a_dict():
    """The reference itself: over a sequence of calls with removals, it behaves as a set of keys."""
    gen = torch.Generator().manual_seed(1)
    table = torch.full((256,), EMPTY, dtype=torch.int64)
    held: dict[int, int] = {}
    for _ in range(12):
        keys = torch.randint(0, 150, (60,), generator=gen, dtype=torch.int64).unique()
        keys = keys[torch.randperm(keys.numel(), generator=gen)]
        slots, inserted = find_or_insert(table, keys)
        for key, slot, new in zip(keys.tolist(), slots.tolist(), inserted.tolist(), strict=True):
            assert new == (key not in held)
            assert held.setdefault(key, slot) == slot
        for key in list(held)[::3]:  # remove a third: tombstones
            table[held.pop(key)] = TOMBSTONE
    assert sorted(table[table >= 0].tolist()) == sorted(held)


def test_bad_arguments_are_named():
    keys = torch.tensor([1, 2], dtype=torch.int64)
    with pytest.raises(ValueError, match="power of two"):
        find_or_insert(torch.full((12,), EMPTY, dtype=torch.int64), keys)
    with pytest.raises(ValueError, match="keys must be 1-D int64"):
        find_or_insert(torch.full((16,), EMPTY, dtype=torch.int64), keys.int())
