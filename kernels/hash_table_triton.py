"""Triton find-or-insert in an open-addressing int64 hash table (contract: kernels.hash_table).

One lane per key, BLOCK keys per program. Phase 1 probes linearly from the home slot
(splitmix64(key) & mask, the same function as the reference) until the key or EMPTY. Phase 2
(insert) probes again from the home slot and claims the first EMPTY or TOMBSTONE slot with
``tl.atomic_cas`` (issued only in rounds where some lane of the block sees a free slot); a lane whose
CAS loses (another key took the slot) moves on. Probing is bounded by
the table size, so a full table ends the loop instead of spinning (the lane reports slot -1).

No host sync and no temporary beyond the two outputs: a call costs one read of each key, the probed
slots (one 8-byte read per probe, one CAS per inserted key) and the two output writes.
"""

import torch
import triton
import triton.language as tl

from kernels.hashing import GOLDEN, MIX1, MIX2

# Globals read inside a kernel must be tl.constexpr (kernels/unique_partition_triton.py says why)
_EMPTY = tl.constexpr(-1)
_TOMBSTONE = tl.constexpr(-2)
_NEVER = tl.constexpr(-3)  # no slot ever holds it: a CAS comparing against it is a read
# splitmix64's constants (kernels.hashing), and the masks of its logical right shifts
_GOLDEN = tl.constexpr(GOLDEN)
_MIX1 = tl.constexpr(MIX1)
_MIX2 = tl.constexpr(MIX2)
_LOW34 = tl.constexpr((1 << 34) - 1)
_LOW37 = tl.constexpr((1 << 37) - 1)
_LOW33 = tl.constexpr((1 << 33) - 1)
BLOCK = 256  # keys per program: probing loops run while any lane of the block is unresolved


@triton.jit
def splitmix64_triton(x):
    """kernels.hashing.splitmix64 on int64 (wrapping arithmetic; >> is arithmetic, hence the masks)."""
    z = x + _GOLDEN
    z = (z ^ ((z >> 30) & _LOW34)) * _MIX1
    z = (z ^ ((z >> 27) & _LOW37)) * _MIX2
    return z ^ ((z >> 31) & _LOW33)


@triton.jit(do_not_specialize=["n_keys", "slot_mask", "capacity"])
def _find_or_insert_kernel(
    keys_ptr,  # int64 [K] distinct keys >= 0
    n_keys,  # K
    slot_keys_ptr,  # int64 [S] the table: keys, _EMPTY or _TOMBSTONE
    slot_mask,  # S - 1 (S a power of two)
    capacity,  # S: bound on probes per phase
    slots_ptr,  # int64 [K] out: slot holding each key, -1 if absent
    inserted_ptr,  # int8 [K] out: 1 where this call inserted the key
    INSERT: tl.constexpr,  # 0: find only, 1: find, then insert the missing keys
    BLOCK: tl.constexpr,  # keys per program
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < n_keys
    key = tl.load(keys_ptr + offs, mask=valid, other=0)
    home = splitmix64_triton(key) & slot_mask

    slot = home
    pending = valid
    found = offs < 0  # all false
    n_pending = tl.sum(pending.to(tl.int32))
    probes = 0
    while (n_pending > 0) & (probes < capacity):
        current = tl.load(slot_keys_ptr + slot, mask=pending, other=_EMPTY)
        found = found | (pending & (current == key))
        pending = pending & (current != key) & (current != _EMPTY)
        slot = tl.where(pending, (slot + 1) & slot_mask, slot)
        n_pending = tl.sum(pending.to(tl.int32))
        probes += 1
    result = tl.where(found, slot, -1)
    inserted = offs < 0
    if INSERT:
        slot = home
        pending = valid & ~found
        n_pending = tl.sum(pending.to(tl.int32))
        probes = 0
        while (n_pending > 0) & (probes < capacity):
            current = tl.load(slot_keys_ptr + slot, mask=pending, other=0)
            free = pending & ((current == _EMPTY) | (current == _TOMBSTONE))
            won = offs < 0  # all false
            # rounds where no lane of the block sees a free slot issue no CAS
            if tl.sum(free.to(tl.int32)) > 0:
                # atomic_cas has no mask: lanes that must not write compare against a value no slot holds
                cmp = tl.where(free, current, _NEVER).to(tl.int64)
                old = tl.atomic_cas(slot_keys_ptr + slot, cmp, key)
                won = free & (old == current)
            inserted = inserted | won
            pending = pending & ~won
            slot = tl.where(pending, (slot + 1) & slot_mask, slot)
            n_pending = tl.sum(pending.to(tl.int32))
            probes += 1
        result = tl.where(inserted, slot, result)
    tl.store(slots_ptr + offs, result, mask=valid)
    tl.store(inserted_ptr + offs, inserted.to(tl.int8), mask=valid)


def find_or_insert_triton(slot_keys: torch.Tensor, keys: torch.Tensor, insert: bool = True):
    """Same contract as kernels.hash_table.find_or_insert (arguments checked there)."""
    n = keys.numel()
    slots = torch.empty(n, dtype=torch.int64, device=keys.device)
    inserted = torch.empty(n, dtype=torch.int8, device=keys.device)
    if n:
        capacity = slot_keys.numel()
        _find_or_insert_kernel[(triton.cdiv(n, BLOCK),)](
            keys.contiguous(),
            n,
            slot_keys,
            capacity - 1,
            capacity,
            slots,
            inserted,
            INSERT=int(insert),
            BLOCK=BLOCK,
        )
    return slots, inserted.bool()


def compile_cases():
    """Calls covering every specialization (kernels.compile_check): find only, and find-or-insert."""
    keys = torch.arange(300, dtype=torch.int64) * 7919
    for insert in (False, True):
        yield lambda i=insert: find_or_insert_triton(
            torch.full((1024,), -1, dtype=torch.int64), keys, i
        )
