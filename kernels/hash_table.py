"""Find-or-insert of int64 keys in an open-addressing hash table (the index of a dynamic embedding table).

The table is one int64 array ``slot_keys`` of a power-of-two size S: a slot holds a key (>= 0), EMPTY
(never used) or TOMBSTONE (its key was removed; the caller writes tombstones between calls). A key's
home slot is ``splitmix64(key) & (S - 1)``; probing is linear. Invariant: a key present in the table
sits before the first EMPTY slot of its probe sequence, so a lookup stops at EMPTY (tombstones do not
stop it). The caller keeps EMPTY slots around (load factor < 1, tombstones cleared by rehashing).

``find_or_insert(slot_keys, keys, insert)``, keys distinct within one call (the callers deduplicate):
  phase 1  find: probe from the home slot until the key or EMPTY.
  phase 2  (insert=True, keys not found) probe from the home slot again and claim the first EMPTY or
           TOMBSTONE slot (compare-and-swap on GPU). No other lane of the call inserts the same key,
           so claiming a tombstone before the key's old position cannot duplicate it.
Returns (slot int64 [K], inserted bool [K]): the slot holding each key after the call (-1: absent with
insert=False, or no free slot at all), and whether this call inserted it.

Which free slot a new key lands in depends on the order in which lanes claim slots: the reference
resolves contention by lane order (lowest lane first, the others go on probing), the GPU kernel by
whichever CAS lands first.
Everything the callers derive is keyed by the key, never by the slot, so both give the same results:
the same found slots for existing keys, the same inserted keys, the same set of keys in the table.
"""

import torch

from kernels.dispatch import by_device
from kernels.hashing import splitmix64

EMPTY = -1  # keys are >= 0: a free slot that ends every probe sequence through it
TOMBSTONE = -2  # a removed key: lookups probe past it, inserts may reuse it
WINDOW = 8  # slots the reference reads per key and round


def home_slot(keys: torch.Tensor, slot_mask: int) -> torch.Tensor:
    """The first slot of each key's probe sequence (the Triton kernel computes the same)."""
    return splitmix64(keys) & slot_mask


def find_or_insert_reference(slot_keys: torch.Tensor, keys: torch.Tensor, insert: bool = True):
    """Pure-torch open addressing, vectorized over the keys still probing: each round reads a window of WINDOW
    consecutive slots per key (fewer rounds, and host syncs, than one slot per round)."""
    capacity = slot_keys.numel()
    mask = capacity - 1
    device = keys.device
    slots = torch.full_like(keys, -1)
    inserted = torch.zeros(keys.numel(), dtype=torch.bool, device=device)
    if keys.numel() == 0:
        return slots, inserted
    window = torch.arange(min(WINDOW, capacity), device=device)
    home = home_slot(keys, mask)
    # phase 1: the key, or EMPTY, whichever comes first in probe order ends the search
    lane, start = torch.arange(keys.numel(), device=device), home
    for _ in range(0, capacity, window.numel()):
        if lane.numel() == 0:
            break
        probed = (start[:, None] + window) & mask
        current = slot_keys[probed]
        stop = (current == keys[lane, None]) | (current == EMPTY)
        first = stop.int().argmax(1)
        hit = stop.any(1) & (current.gather(1, first[:, None]).squeeze(1) == keys[lane])
        slots[lane[hit]] = probed.gather(1, first[:, None]).squeeze(1)[hit]
        going = ~stop.any(1)
        lane, start = lane[going], (start[going] + window.numel()) & mask
    if not insert:
        return slots, inserted
    # phase 2: claim the first EMPTY or TOMBSTONE slot; keys reaching one slot in the same round: the lowest lane
    # takes it, the others go on from the slot after it
    lane = (slots < 0).nonzero().squeeze(1)
    start, probes = home[lane], torch.zeros_like(lane)
    for _ in range(capacity):
        if lane.numel() == 0:
            break
        probed = (start[:, None] + window) & mask
        current = slot_keys[probed]
        free = (current == EMPTY) | (current == TOMBSTONE)
        has_free = free.any(1)
        first = free.int().argmax(1)
        candidate = probed.gather(1, first[:, None]).squeeze(1)
        claim = torch.full((capacity,), keys.numel(), dtype=torch.int64, device=device)
        claim.scatter_reduce_(0, candidate[has_free], lane[has_free], "amin")
        won = has_free & (claim[candidate] == lane)
        slot_keys[candidate[won]] = keys[lane[won]]
        slots[lane[won]], inserted[lane[won]] = candidate[won], True
        probes = probes + torch.where(has_free, first + 1, window.numel())
        start = torch.where(has_free, candidate + 1, start + window.numel()) & mask
        # a key that went round the whole table finds no room: slot -1
        going = ~won & (probes < capacity)
        lane, start, probes = lane[going], start[going], probes[going]
    return slots, inserted


def _check(slot_keys: torch.Tensor, keys: torch.Tensor) -> None:
    for name, t in (("slot_keys", slot_keys), ("keys", keys)):
        if t.dtype != torch.int64 or t.dim() != 1:
            raise ValueError(f"{name} must be 1-D int64, got {t.dtype} {tuple(t.shape)}")
    if slot_keys.device != keys.device:
        raise ValueError(f"slot_keys on {slot_keys.device}, keys on {keys.device}")
    capacity = slot_keys.numel()
    if capacity < 1 or capacity & (capacity - 1):
        raise ValueError(f"the table size must be a power of two, got {capacity}")


def find_or_insert(slot_keys: torch.Tensor, keys: torch.Tensor, insert: bool = True):
    """Look keys up in the table, inserting the missing ones when ``insert``.

    Args:
        slot_keys: int64 [S] the table (S a power of two), updated in place when inserting.
        keys: int64 [K] keys >= 0, distinct (duplicates may be inserted twice).
        insert: False only looks up (evaluation), True also inserts.
    Returns:
        slots int64 [K] (-1 where absent), inserted bool [K] (see the module docstring).
    """
    _check(slot_keys, keys)
    run = by_device(
        slot_keys,
        reference=find_or_insert_reference,
        triton="hash_table_triton.find_or_insert_triton",
    )
    return run(slot_keys, keys, insert)
