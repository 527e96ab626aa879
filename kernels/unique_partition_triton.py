"""Triton unique + partition-by-owner of embedding keys: deterministic, no sort of the keys.

The unique keys come out in order of first occurrence (then grouped by owner, stably), which
is also what the torch reference returns, so both paths give identical outputs.

Every position i gets its key's representative rep[i] = the first position holding that key,
found one of two ways:

- direct (``key_space`` given and <= DIRECT_MAX_KEYS, static tables): an int64 array over the key
  space holds ``tag << 32 | position``; one ``atomic_min`` per position leaves each key's first
  position. Each call uses a smaller tag than the previous one, so entries left by earlier calls
  lose every comparison and the array is never cleared. 8 bytes per possible key, so only key
  spaces up to DIRECT_MAX_KEYS (256 MiB of map) take it; larger ones (the DCN-v2 tables: 1.6 GB)
  take the hash path, whose table is sized to the call's N keys. The map belongs to a tensor of
  the caller (``map_owner``, by default ``table_offsets``: the collection's layout holds it), one
  per stream, and is freed when that tensor is: no module-level cache outlives the collection.
- hash (any non-negative int64 key, e.g. a huge key space): an open-addressing table built per
  call (home slot splitmix64(key) & (C - 1), linear probing, capacity C a power of two >= 2N):
  each round reads the slot and only a lane that finds it EMPTY claims it with ``tl.atomic_cas``,
  then ``atomic_min`` of positions per slot. Probing is bounded by ``max_probes`` rounds; a
  program with unresolved lanes raises a device flag. A second launch of the same kernel always
  follows: each of its programs reads the flag and returns at once when it is clear (the usual
  case: a launch of empty programs), else probes without bound on the same table (inserting is
  idempotent: every key finds itself or the first free slot; always terminates, the table has
  more free slots than keys). A pathological key set costs time, never correctness, and the host
  never reads the flag.

Then the unique keys are numbered straight into their place grouped by owner, a counting sort
(stable, no atomics): the representative kernel also marks each first occurrence with its key's
owner (kernels.ownership_triton.key_owner) and counts every block's first occurrences per owner;
``common_triton.column_scan_kernel`` (one program per owner) turns those counts into each block's start within its
owner's group and the owner's total (the ``counts`` output); ``_place_kernel`` gives every first
occurrence its slot (owners before it, earlier blocks, earlier lanes of its block) and writes the
key there; ``_inverse_kernel`` writes ``inverse[i] = slot[rep[i]]``. Host syncs: one, the unique
count that sizes the output; none with ``padded=True`` (the output keeps N entries).
"""

import torch
import triton
import triton.language as tl
from torch.utils.weak import WeakTensorKeyDictionary

from kernels.common_triton import column_scan_kernel
from kernels.hash_table_triton import splitmix64_triton
from kernels.ownership_triton import check_tables, key_owner

# Globals read inside a kernel must be tl.constexpr: the compiler rejects plain ints (the interpreter
# does not, so only kernels.compile_check catches it).
# keys are >= 0, so -1 can never be a real key: it marks an empty slot
_EMPTY = tl.constexpr(-1)
# compare value for lanes that must not write: no slot ever holds -2, so the CAS is a read
_NEVER = tl.constexpr(-2)
_POSITION_MASK = tl.constexpr(0xFFFFFFFF)
_DEFAULT_MAX_PROBES = 64
BLOCK = 1024  # positions per program in every kernel here
SCAN = 1024  # blocks per step of the scan
DIRECT_MAX_KEYS = 1 << 25  # largest key space served by the direct map (256 MiB of int64)
_TAG_START = (1 << 31) - 1  # tags count down from here; the map is refilled when they run out


@triton.jit(do_not_specialize=["n_keys", "key_space", "tag"])
def _first_direct_kernel(
    keys_ptr,  # int64 [N] keys, 0 <= key < key_space
    n_keys,  # N
    # keys outside [0, key_space) break the contract; they are skipped, not written out of bounds
    key_space,
    first_ptr,  # int64 [>= key_space] persistent map: tag << 32 | first position, atomically min-ed
    tag,  # this call's tag, smaller than every earlier call's
    BLOCK: tl.constexpr,  # positions per program
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    key = tl.load(keys_ptr + offs, mask=offs < n_keys, other=0)
    valid = (offs < n_keys) & (key >= 0) & (key < key_space)
    tl.atomic_min(first_ptr + key, (tag.to(tl.int64) << 32) | offs, mask=valid, sem="relaxed")


@triton.jit
def _mark_first(
    offs,  # int64 [BLOCK] this program's positions
    valid,  # bool [BLOCK] positions < N
    key,  # int64 [BLOCK] the key at each position
    rep,  # int32 [BLOCK] first position holding the same key
    rep_ptr,  # int32 [N] out: rep
    group_ptr,  # int32 [N] out: owner of the key at a first occurrence, W elsewhere
    block_counts_ptr,  # int32 [blocks, W] out: first occurrences of this block per owner
    offsets_ptr,  # int64 [T+1] table offsets
    owner_ptr,  # int64 [T] owner rank per table, -1 for row-wise
    num_tables,  # T
    search_steps,  # T.bit_length(); 0 with one owner
    world_size,  # W
):
    tl.store(rep_ptr + offs, rep, mask=valid)
    first = valid & (rep == offs)
    owner = key_owner(key, offsets_ptr, owner_ptr, num_tables, search_steps, world_size)
    # one owner: every key is rank 0's, whatever its table (dedup keys may lie past the offsets)
    owner = tl.where(world_size > 1, owner, 0).to(tl.int32)
    group = tl.where(first, owner, world_size)
    tl.store(group_ptr + offs, group, mask=valid)
    for o in range(0, world_size):
        count = tl.sum((group == o).to(tl.int32), axis=0)
        tl.store(block_counts_ptr + tl.program_id(0) * world_size + o, count)


@triton.jit(do_not_specialize=["n_keys", "key_space", "num_tables", "search_steps", "world_size"])
def _rep_direct_kernel(
    keys_ptr,  # int64 [N] keys
    n_keys,  # N
    key_space,  # as for _first_direct_kernel
    first_ptr,  # int64 map filled by _first_direct_kernel in this call
    rep_ptr,  # int32 [N] out: first position holding the same key
    group_ptr,  # int32 [N] out: owner at first occurrences, W elsewhere (_mark_first)
    block_counts_ptr,  # int32 [blocks, W] out: first occurrences per block and owner
    offsets_ptr,  # int64 [T+1] table offsets
    owner_ptr,  # int64 [T] owner rank per table, -1 for row-wise
    num_tables,  # T
    search_steps,  # T.bit_length(); 0 with one owner
    world_size,  # W
    BLOCK: tl.constexpr,  # positions per program
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < n_keys
    key = tl.load(keys_ptr + offs, mask=valid, other=0)
    in_space = valid & (key >= 0) & (key < key_space)
    rep = (tl.load(first_ptr + key, mask=in_space, other=0) & _POSITION_MASK).to(tl.int32)
    _mark_first(
        offs, valid, key, rep, rep_ptr, group_ptr, block_counts_ptr, offsets_ptr, owner_ptr,
        num_tables, search_steps, world_size,
    )  # fmt: skip


@triton.jit(do_not_specialize=["n_keys", "slot_mask", "max_probes"])
def _insert_hash_kernel(
    keys_ptr,  # int64 [N] keys, all >= 0
    n_keys,  # N
    slot_keys_ptr,  # int64 [C] key slots, pre-filled with _EMPTY; C a power of two
    slot_mask,  # C - 1
    # int32 [C] first position of each slot's key, pre-filled with N, atomically min-ed
    slot_pos_ptr,
    slot_of_ptr,  # int32 [N] out: slot of each position's key
    overflow_ptr,  # int32 [1] set to 1 when some key found no slot within max_probes
    max_probes,  # bound on probing rounds
    RERUN: tl.constexpr,  # 1: run only if overflow is set (then on the table the first pass left)
    BLOCK: tl.constexpr,  # positions per program
):
    if RERUN:
        if tl.load(overflow_ptr) == 0:
            return
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < n_keys
    key = tl.load(keys_ptr + offs, mask=valid, other=0)
    # splitmix64 mixes every key bit into the slot bits: structured ids (i << 40, multiples of a
    # power of two) spread like random ones, where the low bits of key * M put them in a few slots
    slot = splitmix64_triton(key) & slot_mask
    pending = valid
    n_pending = tl.sum(pending.to(tl.int32))
    probes = 0
    while (n_pending > 0) & (probes < max_probes):
        # a plain read first: a lane finding its key, or another key, needs no atomic
        current = tl.load(slot_keys_ptr + slot, mask=pending, other=_NEVER)
        done = pending & (current == key)
        claim = pending & (current == _EMPTY)
        if tl.sum(claim.to(tl.int32)) > 0:
            # atomic_cas has no mask: lanes not claiming compare against a value no slot holds,
            # a read; rounds where no lane of the block claims issue no CAS at all
            cmp = tl.where(claim, _EMPTY, _NEVER).to(tl.int64)
            old = tl.atomic_cas(slot_keys_ptr + slot, cmp, key)
            done = done | (claim & ((old == _EMPTY) | (old == key)))
        pending = pending & ~done
        # linear probing keeps the next candidate in the same cache line most of the time
        slot = tl.where(pending, (slot + 1) & slot_mask, slot)
        n_pending = tl.sum(pending.to(tl.int32))
        probes += 1
    if n_pending > 0:
        tl.store(overflow_ptr, 1)
    resolved = valid & ~pending
    tl.atomic_min(slot_pos_ptr + slot, offs.to(tl.int32), mask=resolved, sem="relaxed")
    tl.store(slot_of_ptr + offs, slot.to(tl.int32), mask=valid)


@triton.jit(do_not_specialize=["n_keys", "num_tables", "search_steps", "world_size"])
def _rep_hash_kernel(
    keys_ptr,  # int64 [N] keys
    slot_of_ptr,  # int32 [N] slot of each position's key
    n_keys,  # N
    slot_pos_ptr,  # int32 [C] first position of each slot's key
    rep_ptr,  # int32 [N] out: first position holding the same key
    group_ptr,  # int32 [N] out: owner at first occurrences, W elsewhere (_mark_first)
    block_counts_ptr,  # int32 [blocks, W] out: first occurrences per block and owner
    offsets_ptr,  # int64 [T+1] table offsets
    owner_ptr,  # int64 [T] owner rank per table, -1 for row-wise
    num_tables,  # T
    search_steps,  # T.bit_length(); 0 with one owner
    world_size,  # W
    BLOCK: tl.constexpr,  # positions per program
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < n_keys
    key = tl.load(keys_ptr + offs, mask=valid, other=0)
    slot = tl.load(slot_of_ptr + offs, mask=valid, other=0)
    rep = tl.load(slot_pos_ptr + slot, mask=valid, other=0)
    _mark_first(
        offs, valid, key, rep, rep_ptr, group_ptr, block_counts_ptr, offsets_ptr, owner_ptr,
        num_tables, search_steps, world_size,
    )  # fmt: skip


@triton.jit(do_not_specialize=["n_keys", "world_size"])
def _place_kernel(
    keys_ptr,  # int64 [N] keys
    n_keys,  # N
    group_ptr,  # int32 [N] owner at first occurrences, W elsewhere
    block_start_ptr,  # int32 [blocks, W] first slot of each block within its owner's group
    counts_ptr,  # int64 [W] unique keys per owner
    world_size,  # W
    slot_ptr,  # int32 [N] out (first occurrences only): the unique key's slot
    unique_ptr,  # int64 [N] out: the unique keys, grouped by owner, the U valid first
    BLOCK: tl.constexpr,  # positions per program
):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < n_keys
    group = tl.load(group_ptr + offs, mask=valid, other=world_size)
    slot = tl.zeros([BLOCK], tl.int64)
    group_start = tl.zeros((), tl.int64)  # owners before o
    for o in range(0, world_size):
        mine = (group == o).to(tl.int32)
        before = tl.cumsum(mine, axis=0) - mine  # earlier lanes of this block, same owner
        start = group_start + tl.load(block_start_ptr + pid * world_size + o)
        slot = tl.where(mine != 0, start + before, slot)
        group_start += tl.load(counts_ptr + o)
    first = group < world_size
    tl.store(slot_ptr + offs, slot.to(tl.int32), mask=first)
    key = tl.load(keys_ptr + offs, mask=first, other=0)
    tl.store(unique_ptr + slot, key, mask=first)


@triton.jit(do_not_specialize=["n_keys"])
def _inverse_kernel(
    rep_ptr,  # int32 [N] first position holding the same key
    n_keys,  # N
    slot_ptr,  # int32 [N] slot of the unique key at each first occurrence
    inverse_ptr,  # int64 [N] out: slot of each position's key
    BLOCK: tl.constexpr,  # positions per program
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < n_keys
    rep = tl.load(rep_ptr + offs, mask=valid, other=0)
    slot = tl.load(slot_ptr + rep, mask=valid, other=0)
    tl.store(inverse_ptr + offs, slot.to(tl.int64), mask=valid)


class _DirectMap:
    """The persistent first-position map of one (device, stream)."""

    def __init__(self):
        self.first = None
        self.tag = _TAG_START

    def next_tag(self, key_space: int, device) -> tuple[torch.Tensor, int]:
        fresh = self.first is None or self.first.numel() < key_space or self.tag <= 1
        if fresh:  # every entry must be above every tag this map will hand out
            size = max(key_space, 0 if self.first is None else self.first.numel())
            self.first = torch.full(
                (size,), torch.iinfo(torch.int64).max, dtype=torch.int64, device=device
            )
            self.tag = _TAG_START
        self.tag -= 1
        return self.first, self.tag


# map_owner -> {stream: _DirectMap}; weak keys: a map lives exactly as long as its owner tensor
_DIRECT_MAPS = WeakTensorKeyDictionary()


def _direct_map(owner: torch.Tensor, device: torch.device) -> _DirectMap:
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    maps = _DIRECT_MAPS.get(owner)
    if maps is None:
        maps = _DIRECT_MAPS[owner] = {}
    return maps.setdefault(stream, _DirectMap())


def _check(keys, table_offsets, table_owner, world_size):
    check_tables(keys, table_offsets, table_owner, world_size)
    if keys.numel() >= 2**31 - 1:
        raise ValueError(
            f"{keys.numel()} keys exceed the int32 positions of this kernel (< 2^31 - 1)"
        )


def _representatives(keys, key_space: int | None, max_probes: int, owners: tuple, map_owner):
    """(rep int32 [N], group int32 [N], block_counts int32 [blocks, W]) by the direct map or the
    hash table (_mark_first); owners: the kernels' table arguments, offsets to world_size."""
    n, device = keys.numel(), keys.device
    grid = (triton.cdiv(n, BLOCK),)
    rep = torch.empty(n, dtype=torch.int32, device=device)
    group = torch.empty(n, dtype=torch.int32, device=device)
    block_counts = torch.empty(grid[0] * owners[-1], dtype=torch.int32, device=device)
    marks = (rep, group, block_counts, *owners)
    if key_space is not None and key_space <= DIRECT_MAX_KEYS:
        first_map, tag = _direct_map(map_owner, device).next_tag(key_space, device)
        _first_direct_kernel[grid](keys, n, key_space, first_map, tag, BLOCK=BLOCK)
        _rep_direct_kernel[grid](keys, n, key_space, first_map, *marks, BLOCK=BLOCK)
        return rep, group, block_counts
    capacity = triton.next_power_of_2(2 * n)
    slot_of = torch.empty(n, dtype=torch.int32, device=device)
    slot_keys = torch.full((capacity,), _EMPTY.value, dtype=torch.int64, device=device)
    slot_pos = torch.full((capacity,), n, dtype=torch.int32, device=device)
    overflow = torch.zeros(1, dtype=torch.int32, device=device)
    # bounded probing, then the rerun that does nothing unless the flag is set: no host read
    for rerun, probes in ((0, max_probes), (1, capacity + 1)):
        _insert_hash_kernel[grid](
            keys,
            n,
            slot_keys,
            capacity - 1,
            slot_pos,
            slot_of,
            overflow,
            probes,
            RERUN=rerun,
            BLOCK=BLOCK,
        )
    _rep_hash_kernel[grid](keys, slot_of, n, slot_pos, *marks, BLOCK=BLOCK)
    return rep, group, block_counts


def unique_partition_triton(
    keys: torch.Tensor,
    table_offsets: torch.Tensor,
    table_owner: torch.Tensor,
    world_size: int,
    key_space: int | None = None,
    max_probes: int = _DEFAULT_MAX_PROBES,
    padded: bool = False,
    counts_out: torch.Tensor | None = None,
    map_owner: torch.Tensor | None = None,
):
    """Same contract and outputs as kernels.unique_partition.unique_partition.

    key_space: an exclusive bound of the keys known on the host (e.g. total rows of all tables), which
    selects the direct map when <= DIRECT_MAX_KEYS; None (or a larger one) selects the hash table.
    padded: unique_keys keeps all N entries (the first counts.sum() valid) and nothing syncs.
    map_owner: the tensor the direct map is kept with and freed with (default table_offsets): pass
    one that lives as long as the caller's module, as table_offsets built per call would not.
    """
    _check(keys, table_offsets, table_owner, world_size)
    device = keys.device
    n = keys.numel()
    if counts_out is not None and (
        counts_out.shape != (world_size,)
        or counts_out.dtype != torch.int64
        or not counts_out.is_contiguous()
        or counts_out.device != device
    ):
        raise ValueError(
            f"counts_out must be contiguous int64 [{world_size}] on {device}, got "
            f"{counts_out.dtype} {tuple(counts_out.shape)} on {counts_out.device}"
        )
    counts = torch.empty(world_size, dtype=torch.int64, device=device)
    if counts_out is not None:
        counts = counts_out
    if n == 0:
        return keys.new_empty(0), counts.zero_(), keys.new_empty(0)
    keys = keys.contiguous()
    tables = table_owner.numel()
    # one owner: no table search (dedup keys may lie past the offsets)
    owners = (table_offsets, table_owner, tables, tables.bit_length() if world_size > 1 else 0)
    map_owner = table_offsets if map_owner is None else map_owner
    rep, group, block_starts = _representatives(
        keys, key_space, max_probes, (*owners, world_size), map_owner
    )
    blocks = triton.cdiv(n, BLOCK)
    # each block's start within its owner's group, and the owners' totals
    column_scan_kernel[(world_size,)](block_starts, blocks, world_size, counts, SCAN=SCAN)
    unique = torch.empty(n, dtype=torch.int64, device=device)
    slot = torch.empty(n, dtype=torch.int32, device=device)
    inverse = torch.empty(n, dtype=torch.int64, device=device)
    grid = (blocks,)
    _place_kernel[grid](keys, n, group, block_starts, counts, world_size, slot, unique, BLOCK=BLOCK)
    _inverse_kernel[grid](rep, n, slot, inverse, BLOCK=BLOCK)
    if padded:
        return unique, counts, inverse
    return unique[: int(counts.sum())], counts, inverse  # the one host sync: the output's size


def compile_cases():
    """Calls covering every specialization this launcher makes (kernels.compile_check compiles them):
    the direct map and the hash table (the bounded pass and the rerun), one owner and several."""
    offsets = torch.tensor([0, 10, 50, 2**40], dtype=torch.int64)
    owners = torch.tensor([0, -1, -1], dtype=torch.int64)
    keys = torch.arange(300, dtype=torch.int64) * 7 % 60
    for world_size in (1, 3):
        yield lambda w=world_size: unique_partition_triton(keys, offsets, owners, w, key_space=60)
        yield lambda w=world_size: unique_partition_triton(keys, offsets, owners, w, padded=True)
