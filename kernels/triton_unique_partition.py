"""Triton unique + partition-by-owner of embedding keys, hash based (no sort).

Pass 1 (``_insert_kernel``) inserts every key into an open-addressing hash table with
``tl.atomic_cas`` on the key slots (linear probing, table size a power of two >= 2N, so the
load factor stays <= 0.5 and probe chains stay short). The lane whose CAS turned the empty
sentinel into its key is the *first* occurrence: it alone computes the key's owner rank,
reserves a rank-local index with one ``atomic_add`` per (program, owner) and records
(owner, index) in the slot. Every lane records the slot it resolved to.

Pass 2 (``_scatter_kernel``) turns (owner, index) into a position in the grouped output
(exclusive cumsum of the W counts, done in-register) and writes ``inverse`` for every key
and ``unique_keys`` once per distinct key. Order inside an owner group depends on atomic
timing and is free by contract.

Probing is bounded by ``max_probes`` rounds; a program that still has unresolved lanes
raises a flag, and the launcher reruns with an unbounded probe count (always terminates:
the table has more free slots than keys), so a pathological key set costs time, never
correctness.
"""

import torch
import triton
import triton.language as tl

# Globals read inside a kernel must be tl.constexpr: the compiler rejects plain ints (the interpreter
# does not, so only kernels.compile_check catches it).
# keys are >= 0, so -1 can never be a real key: it marks an empty slot
_EMPTY = tl.constexpr(-1)
# compare value for lanes that must not write: no slot ever holds -2, so the CAS is a read
_NEVER = tl.constexpr(-2)
# 2^64 / golden ratio as a signed int64: Fibonacci hashing spreads consecutive ids over the table
_HASH_MUL = tl.constexpr(-7046029254386353131)
_DEFAULT_MAX_PROBES = 64
# sizes that change from batch to batch are not specialized: Triton would otherwise compile a new
# variant (about a second, mid-training) whenever one happens to be 1 or a multiple of 16
_SIZES = ["n_keys", "slot_mask", "num_tables", "world_size", "max_probes", "search_steps"]


@triton.jit
def _owner_of(key, table_offsets, table_owner, num_tables, world_size, search_steps):
    # binary search for the last table t with table_offsets[t] <= key (searchsorted right - 1);
    # search_steps = ceil(log2(T)) + 1 covers every T, the same count for every lane
    lo = tl.zeros_like(key)
    hi = tl.zeros_like(key) + (num_tables - 1)
    for _ in range(search_steps):
        mid = (lo + hi + 1) // 2
        start = tl.load(table_offsets + mid)
        ok = start <= key
        lo = tl.where(ok, mid, lo)
        hi = tl.where(ok, hi, mid - 1)
    row = key - tl.load(table_offsets + lo)
    owner = tl.load(table_owner + lo)
    # table_owner < 0 marks a row-wise table: rows are dealt round-robin over the ranks
    return tl.where(owner >= 0, owner, row % world_size)


@triton.jit(do_not_specialize=_SIZES)
def _insert_kernel(
    keys_ptr,           # int64 [N] keys, all >= 0
    n_keys,             # N
    slot_keys_ptr,      # int64 [C] hash table key slots, pre-filled with _EMPTY; C a power of two
    slot_mask,          # C - 1
    slot_owner_ptr,     # int32 [C] owner rank of the key in each slot (written by its first lane)
    slot_rank_ptr,      # int32 [C] index of that key inside its owner's group
    slot_of_ptr,        # int32 [N] out: slot of each key, as ~slot (negative) on the first occurrence
    table_offsets_ptr,  # int64 [T+1] first fused row of each table
    table_owner_ptr,    # int64 [T] owner rank per table, -1 for row-wise
    num_tables,         # T
    world_size,         # W
    counts_ptr,         # int64 [W] out: unique keys per owner (zeroed by the launcher)
    overflow_ptr,       # int32 [1] out: set to 1 when some key found no slot within max_probes
    max_probes,         # bound on probing rounds
    search_steps,       # binary-search steps over the T tables: bit_length(T - 1) + 1
    BLOCK: tl.constexpr,    # keys per program
    W_BLOCK: tl.constexpr,  # >= W, width of the per-owner histogram (one of _W_BLOCKS)
):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < n_keys
    key = tl.load(keys_ptr + offs, mask=valid, other=0)

    h = key * _HASH_MUL
    h = h ^ (h >> 29)
    slot = h & slot_mask
    pending = valid
    first = tl.zeros([BLOCK], dtype=tl.int1)
    n_pending = tl.sum(pending.to(tl.int32))
    probes = 0
    while (n_pending > 0) & (probes < max_probes):
        # atomic_cas has no mask: resolved and padding lanes compare against a value no slot
        # holds, which turns their CAS into a harmless read
        cmp = tl.where(pending, _EMPTY, _NEVER).to(tl.int64)
        old = tl.atomic_cas(slot_keys_ptr + slot, cmp, key)
        inserted = pending & (old == _EMPTY)
        found = pending & (old == key)
        first = first | inserted
        pending = pending & ~(inserted | found)
        # linear probing keeps the next candidate in the same cache line most of the time
        slot = tl.where(pending, (slot + 1) & slot_mask, slot)
        n_pending = tl.sum(pending.to(tl.int32))
        probes += 1
    if n_pending > 0:
        tl.store(overflow_ptr, 1)

    owner = _owner_of(key, table_offsets_ptr, table_owner_ptr, num_tables, world_size, search_steps)
    # one atomic per (program, owner) instead of one per key: W counters are hot addresses,
    # so ranks inside the block come from a cumsum over a one-hot [BLOCK, W] matrix
    ranks = tl.arange(0, W_BLOCK)
    onehot = (owner[:, None] == ranks[None, :]) & first[:, None]
    onehot_i = onehot.to(tl.int32)
    block_counts = tl.sum(onehot_i, axis=0)
    rank_in_block = tl.cumsum(onehot_i, axis=0) - onehot_i
    base = tl.atomic_add(counts_ptr + ranks, block_counts.to(tl.int64), mask=ranks < world_size)
    rank = tl.sum(tl.where(onehot, rank_in_block + base[None, :].to(tl.int32), 0), axis=1)

    tl.store(slot_owner_ptr + slot, owner.to(tl.int32), mask=first)
    tl.store(slot_rank_ptr + slot, rank, mask=first)
    # the sign carries "first occurrence" to pass 2 for free (~slot = -slot - 1 < 0)
    tagged = tl.where(first, ~slot, slot).to(tl.int32)
    tl.store(slot_of_ptr + offs, tagged, mask=valid)


@triton.jit(do_not_specialize=["n_keys", "world_size"])
def _scatter_kernel(
    keys_ptr,        # int64 [N] keys
    n_keys,          # N
    slot_of_ptr,     # int32 [N] slot of each key from pass 1 (~slot on first occurrences)
    slot_owner_ptr,  # int32 [C] owner per slot
    slot_rank_ptr,   # int32 [C] index inside the owner group per slot
    counts_ptr,      # int64 [W] unique keys per owner
    world_size,      # W
    unique_ptr,      # int64 [U] out: unique keys grouped by owner
    inverse_ptr,     # int64 [N] out: position of each key in unique
    BLOCK: tl.constexpr,    # keys per program
    W_BLOCK: tl.constexpr,  # >= W (one of _W_BLOCKS)
):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < n_keys
    tagged = tl.load(slot_of_ptr + offs, mask=valid, other=0)
    first = tagged < 0
    slot = tl.where(first, ~tagged, tagged)
    owner = tl.load(slot_owner_ptr + slot, mask=valid, other=0)
    rank = tl.load(slot_rank_ptr + slot, mask=valid, other=0)

    # exclusive cumsum of W counts recomputed per program: W is tiny and this saves a launch
    ranks = tl.arange(0, W_BLOCK)
    counts = tl.load(counts_ptr + ranks, mask=ranks < world_size, other=0)
    group_start = tl.sum(tl.where(ranks[None, :] < owner[:, None], counts[None, :], 0), axis=1)
    pos = group_start + rank
    tl.store(inverse_ptr + offs, pos, mask=valid)
    key = tl.load(keys_ptr + offs, mask=valid & first, other=0)
    tl.store(unique_ptr + pos, key, mask=valid & first)


# histogram widths: a few classes rather than next_power_of_2(W), so few variants get compiled
_W_BLOCKS = (8, 64, 512, 4096)


def _blocks(world_size: int) -> tuple[int, int]:
    """(W_BLOCK, BLOCK) for W ranks: the [BLOCK, W_BLOCK] one-hot stays at 8K-16K elements in registers."""
    w_block = next(w for w in _W_BLOCKS if w >= world_size)
    return w_block, max(4, min(1024, 16384 // w_block))


def _check(keys, table_offsets, table_owner, world_size):
    for name, t in (("keys", keys), ("table_offsets", table_offsets), ("table_owner", table_owner)):
        if t.dtype != torch.int64:
            raise ValueError(f"{name} must be int64, got {t.dtype}")
        if t.dim() != 1:
            raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
        if t.device != keys.device:
            raise ValueError(f"{name} is on {t.device}, keys on {keys.device}")
    if table_offsets.numel() != table_owner.numel() + 1 or table_owner.numel() == 0:
        raise ValueError(f"need T >= 1 tables and T+1 offsets, got {table_owner.numel()} owners "
                         f"and {table_offsets.numel()} offsets")
    if not 1 <= world_size <= _W_BLOCKS[-1]:
        raise ValueError(f"world_size must be in [1, {_W_BLOCKS[-1]}], got {world_size}")
    if keys.numel() >= 2**30:
        raise ValueError(f"{keys.numel()} keys exceed the int32 slot indices of this kernel (< 2^30)")


def unique_partition_triton(keys: torch.Tensor, table_offsets: torch.Tensor, table_owner: torch.Tensor,
                            world_size: int, max_probes: int = _DEFAULT_MAX_PROBES):
    """Same contract as kernels.unique_partition.unique_partition (order inside a group free).

    One host sync: the W counts, needed to size unique_keys.
    """
    _check(keys, table_offsets, table_owner, world_size)
    device = keys.device
    n = keys.numel()
    counts = torch.zeros(world_size, dtype=torch.int64, device=device)
    if n == 0:
        return keys.new_empty(0), counts, keys.new_empty(0)
    keys = keys.contiguous()
    table_offsets = table_offsets.contiguous()
    table_owner = table_owner.contiguous()

    capacity = triton.next_power_of_2(2 * n)
    w_block, block = _blocks(world_size)
    num_tables = table_owner.numel()
    search_steps = max(1, (num_tables - 1).bit_length()) + 1
    grid = (triton.cdiv(n, block),)

    slot_owner = torch.empty(capacity, dtype=torch.int32, device=device)
    slot_rank = torch.empty(capacity, dtype=torch.int32, device=device)
    slot_of = torch.empty(n, dtype=torch.int32, device=device)
    for probes in (max_probes, capacity + 1):
        slot_keys = torch.full((capacity,), _EMPTY.value, dtype=torch.int64, device=device)
        status = torch.zeros(world_size + 1, dtype=torch.int64, device=device)
        counts = status[:world_size]
        overflow = torch.zeros(1, dtype=torch.int32, device=device)
        _insert_kernel[grid](
            keys, n, slot_keys, capacity - 1, slot_owner, slot_rank, slot_of,
            table_offsets, table_owner, num_tables, world_size, counts, overflow, probes, search_steps,
            BLOCK=block, W_BLOCK=w_block,
        )
        # counts and the overflow flag come back in one sync
        status[world_size] = overflow[0].to(torch.int64)
        host = status.tolist()
        if host[world_size] == 0:
            break
    else:  # pragma: no cover - unbounded probing always resolves (capacity > n)
        raise RuntimeError("unique_partition_triton: hash table overflow even with unbounded probing")
    num_unique = sum(host[:world_size])
    counts = counts.clone()

    unique = torch.empty(num_unique, dtype=torch.int64, device=device)
    inverse = torch.empty(n, dtype=torch.int64, device=device)
    _scatter_kernel[grid](
        keys, n, slot_of, slot_owner, slot_rank, counts, world_size, unique, inverse,
        BLOCK=block, W_BLOCK=w_block,
    )
    return unique, counts, inverse


def compile_cases():
    """Calls covering every specialization this launcher makes (kernels.compile_check compiles them):
    each W_BLOCK class (world sizes up to 1024), one table and several, single keys, the unbounded retry."""
    offsets = torch.tensor([0, 10, 50, 2**40], dtype=torch.int64)
    keys = torch.arange(300, dtype=torch.int64) * 7 % 60
    for world_size in (1, 9, 65, 513):  # one per W_BLOCK class
        owners = torch.tensor([0, -1, -1], dtype=torch.int64)
        yield lambda w=world_size, o=owners: unique_partition_triton(keys, offsets, o, w)
    one_table = torch.tensor([0, 100], dtype=torch.int64)
    for world_size in (1, 2):
        yield lambda w=world_size: unique_partition_triton(keys[:1], one_table, torch.zeros(1, dtype=torch.int64), w)
    # the overflow retry probes without bound (max_probes = capacity + 1, odd)
    yield lambda: unique_partition_triton(keys, offsets, torch.tensor([0, -1, -1], dtype=torch.int64), 2,
                                          max_probes=1025)
