"""DynamicShard: this rank's part of one dynamic table (raw int64 keys, rows given on admission).

Ownership. Key k of table T lives in key shard s = splitmix64(k ^ salt(T)) mod key_shards on rank
s % W. Everything about a key (row, lookup count, last step seen) depends only on the keys of its
shard, never on W or memory, so W = 1, 2 and 4 admit and evict the same keys at the same steps.

A DynamicShard holds the hash index (open addressing over int64 slots, kernels.find_or_insert;
per slot the key's row in the table's pool, -1 for none yet, its lookup count and the
last step it was seen) and a pool of rows with a free list (a stack) that evicted keys' rows go
back to.

Admission (admit_min_freq = N). Lookups are counted exactly in the index (a counting hash table,
not a sketch). In the step where a key's count reaches N it gets a row (init_rows) and trains from
that step on; before, it reads the null row (zeros) and gets no update. Its freq starts at the
lookups counted before that step.

Eviction. Keys not seen for more than evict_after_steps = E steps are forgotten, by a sweep of the index
every N = ceil(E / EXPIRY_SLACK) steps (at the steps that are multiples of N) rather than at every step: a key
last seen at step t is dropped at the first multiple of N after t + E, so no earlier than E and no later than
E + N steps after its last lookup (N = 1 for E <= EXPIRY_SLACK: the exact step t + E + 1). Which steps sweep
depends only on the step number, never on W, slots or restores. With evict_when_full
a key shard keeps capacity / key_shards rows and frees the rows of its least recently seen keys
(ties: smaller key first; never keys seen in this step); otherwise a rank's pool doubles when
full, up to its share of max_capacity, beyond which the run stops naming the table.

A training step: prepare -> one host sync for all tables (the counters of Prepared.stats) ->
absorb -> [the storage grows] -> allocate. Evaluation only looks keys up (find_rows).
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass

import torch

from embedding.tables import Table
from kernels import find_or_insert
from kernels.hash_table import EMPTY, TOMBSTONE
from kernels.hashing import splitmix64, uniform

MIN_SLOTS = 16
# expiry sweeps every ceil(E / EXPIRY_SLACK) steps: an id outlives evict_after_steps by at most 1/8 of it,
# for 1/N of the per-step index traffic of a sweep at every step
EXPIRY_SLACK = 8


def expire_every(evict_after_steps: int) -> int:
    """N: the steps between two expiry sweeps (the sweeps run at the steps that are multiples of N)."""
    return max(1, math.ceil(evict_after_steps / EXPIRY_SLACK))


def table_salt(name: str) -> int:
    """A 64-bit constant per table name (signed int64): key shards and initial rows use it, so they stay the same
    when other tables are added or reordered (warm starts)."""
    value = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")
    return value - (1 << 64) if value >= 1 << 63 else value


@functools.cache
def _table_key(seed: int, salt: int) -> int:
    """The hash key of a table's initial rows: once per table, not on every admitting step."""
    return int(splitmix64(torch.tensor([seed * 1_000_003 ^ salt], dtype=torch.int64))[0])


def init_rows(
    keys: torch.Tensor, seed: int, salt: int, dim: int, bound: float, dtype
) -> torch.Tensor:
    """Initial rows of keys: uniform(+-bound) from a hash of (seed, table, key, column), like the static tables'
    rows (storage.RowStorage.init_weights): the same on any rank, slot and device."""
    table_key = _table_key(seed, salt)
    d = torch.arange(dim, dtype=torch.int64, device=keys.device)
    base = splitmix64(keys ^ table_key)
    return ((2.0 * uniform(base[:, None] * dim + d) - 1.0) * bound).to(dtype)


def compact(mask: torch.Tensor, count: int) -> torch.Tensor:
    """Positions of the count True entries of mask, in order, without a host sync (count is known)."""
    position = torch.cumsum(mask, 0) - 1
    out = torch.empty(count + 1, dtype=torch.int64, device=mask.device)
    out.scatter_(
        0, torch.where(mask, position, count), torch.arange(mask.numel(), device=mask.device)
    )
    return out[:count]


def _pow2_at_least(n: float) -> int:
    return max(MIN_SLOTS, 1 << max(0, math.ceil(math.log2(max(n, 1)))))


@dataclass
class Prepared:
    """One table's training step between DynamicShard.prepare and allocate."""

    keys: torch.Tensor  # [U] distinct keys of the step
    counts: torch.Tensor  # [U] their lookups in the step
    slots: torch.Tensor  # [U] their index slots
    need: torch.Tensor  # [U] bool: admitted in this step
    stats: torch.Tensor  # int64 counters read by the step's one host sync
    num_need: int = 0


class DynamicTableFull(RuntimeError):
    """A dynamic table has no room left under its capacity policy."""


class DynamicShard:
    """This rank's part of one dynamic table: hash index, row pool, admission and eviction (module docstring)."""

    def __init__(self, table: Table, rank: int, world_size: int, device):
        spec = table.dynamic
        self.name, self.spec, self.rank, self.world_size = table.name, spec, rank, world_size
        self.device = torch.device(device)
        self.salt = table_salt(table.name)
        self.local_shards = len(range(rank, spec.key_shards, world_size))
        if self.local_shards == 0:
            raise ValueError(
                f"dynamic table {table.name!r}: key_shards={spec.key_shards} is below the world size "
                f"{world_size}, so rank {rank} would own no keys; raise key_shards"
            )
        # evict_when_full: rows per key shard
        self.shard_capacity = math.ceil(spec.capacity / spec.key_shards)
        share = self.local_shards / spec.key_shards
        if spec.evict_when_full:
            self.pool = self.max_pool = self.shard_capacity * self.local_shards
        else:
            self.pool = max(1, math.ceil(spec.capacity * share))
            self.max_pool = math.ceil(spec.max_capacity * share) if spec.max_capacity else None
        # initial rows: uniform(+-sqrt(1/num_embeddings)) as for static tables; num_embeddings is the expected
        # vocabulary, capacity only memory, so growing or resizing a table never changes its values
        self.bound = (1.0 / table.num_embeddings) ** 0.5
        self._new_index(_pow2_at_least(self.pool / spec.load_factor))
        # the free list: rows [0, top) of the stack are free, the last entry takes writes that must go nowhere
        self.free = torch.empty(self.pool + 1, dtype=torch.int64, device=self.device)
        # row 0 is handed out first
        self.free[: self.pool] = torch.arange(self.pool - 1, -1, -1, device=self.device)
        self.top = self.pool
        # index slots holding a key or a tombstone: an upper bound (a key that reuses a tombstone counts again),
        # exact after a rehash; it only decides when to rehash
        self.used = 0
        self.entries = 0  # keys in the index, admitted or pending
        self.shard_live = torch.zeros(self.local_shards, dtype=torch.int64, device=self.device)
        self.admitted = self.evicted = 0  # rows admitted / freed since the counters were last read
        # ... since this process started (restores not counted)
        self.admitted_total = self.evicted_total = 0
        # the first step >= this one that is a multiple of N sweeps; set at the first prepare, so that a run
        # resumed from a checkpoint sweeps at the same steps as one that was not interrupted
        self.next_sweep: int | None = None

    # ---- index --------------------------------------------------------------------------------------------------
    def _new_index(self, slots: int) -> None:
        self.slot_keys = torch.full((slots,), EMPTY, dtype=torch.int64, device=self.device)
        self.slot_row = torch.full((slots,), -1, dtype=torch.int64, device=self.device)
        self.slot_count = torch.zeros(slots, dtype=torch.int64, device=self.device)
        self.slot_seen = torch.zeros(slots, dtype=torch.int64, device=self.device)

    @property
    def live(self) -> int:
        return self.pool - self.top

    def shard_of(self, keys: torch.Tensor) -> torch.Tensor:
        return torch.remainder(splitmix64(keys ^ self.salt), self.spec.key_shards)

    def owner(self, keys: torch.Tensor) -> torch.Tensor:
        return self.shard_of(keys) % self.world_size

    def _local_shard(self, keys: torch.Tensor) -> torch.Tensor:
        return self.shard_of(keys) // self.world_size

    def _ensure_slots(self, incoming: int) -> None:
        """Rehash when up to `incoming` new keys could push the index past its load factor: into a table sized for
        the keys held plus the incoming ones at half the load factor (tombstones dropped). Rare: it syncs."""
        size = self.slot_keys.numel()
        if self.used + incoming <= self.spec.load_factor * size:
            return
        held = (self.slot_keys >= 0).nonzero().squeeze(1)
        old = (
            self.slot_keys[held],
            self.slot_row[held],
            self.slot_count[held],
            self.slot_seen[held],
        )
        self._new_index(
            max(size, _pow2_at_least(2 * (held.numel() + incoming) / self.spec.load_factor))
        )
        slots, _ = find_or_insert(self.slot_keys, old[0], True)
        self.slot_row[slots], self.slot_count[slots], self.slot_seen[slots] = old[1], old[2], old[3]
        self.used = self.entries = held.numel()

    def find_rows(self, keys: torch.Tensor) -> torch.Tensor:
        """Rows (of the table's pool; -1: none) of keys, which may repeat. Looks up only (evaluation)."""
        slots, _ = find_or_insert(self.slot_keys, keys, False)
        return torch.where(slots >= 0, self.slot_row[slots.clamp(min=0)], -1)

    # ---- one training step: prepare -> (the collection's one sync) -> absorb -> [grow storage] -> allocate ----------
    def prepare(self, keys: torch.Tensor, counts: torch.Tensor, step: int) -> Prepared:
        """Expire stale keys, insert the step's distinct keys, count their lookups, mark the ones to admit."""
        # first: a rehash recounts the keys held, expired ones included
        self._ensure_slots(keys.numel())
        expired_keys, expired_rows = self._expire(step)
        slots, inserted = find_or_insert(self.slot_keys, keys, True)
        # a key new in this call may sit on a tombstone, whose count _remove leaves as it was
        count = torch.where(inserted, 0, self.slot_count[slots]) + counts
        self.slot_count[slots] = count
        self.slot_seen[slots] = step
        need = (self.slot_row[slots] < 0) & (count >= self.spec.admit_min_freq)
        stats = [inserted.sum(), need.sum(), expired_keys, expired_rows]
        # each local key shard's rows beyond its capacity after admission
        if self.spec.evict_when_full:
            admitting = torch.zeros_like(self.shard_live).index_add_(
                0, self._local_shard(keys), need.long()
            )
            stats.append(self.shard_live + admitting - self.shard_capacity)
        return Prepared(keys, counts, slots, need, torch.cat([torch.stack(stats[:4]), *stats[4:]]))

    def absorb(self, prepared: Prepared, stats: list[int], step: int) -> int:
        """Take the synced counters; apply the capacity policy. Returns the rows the pool must have (to grow to)."""
        inserted, prepared.num_need, expired_keys, expired_rows = stats[:4]
        self.used += inserted
        self.entries += inserted - expired_keys
        self.top += expired_rows
        self.evicted += expired_rows
        if self.spec.evict_when_full:
            over = stats[4:]
            if any(o > 0 for o in over):
                self._evict_least_recent(over, step)
            return self.pool
        needed = self.live + prepared.num_need
        if needed <= self.pool:
            return self.pool
        if self.max_pool is not None and needed > self.max_pool:
            raise DynamicTableFull(
                f"dynamic table {self.name!r} is full on rank {self.rank}: max_capacity={self.spec.max_capacity} rows "
                f"({self.max_pool} on this rank, its {self.local_shards} of {self.spec.key_shards} key shards) hold "
                f"{self.live} live keys and this step admits {prepared.num_need} more; raise max_capacity (0 = no "
                "limit), or set evict_when_full = true to evict the least recently seen keys"
            )
        return min(max(2 * self.pool, needed), self.max_pool or needed * 2)

    def allocate(self, prepared: Prepared) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Give the admitted keys rows. Returns (row of every key of the step, -1 if none; positions of the admitted
        keys among them; their new rows), rows of the table's pool."""
        n = prepared.num_need
        picked = compact(prepared.need, n)
        new_rows = self.free[self.top - n : self.top].flip(0)
        self.top -= n
        self.admitted += n
        self.slot_row[prepared.slots[picked]] = new_rows
        if self.spec.evict_when_full:
            self.shard_live.index_add_(
                0, self._local_shard(prepared.keys[picked]), torch.ones_like(new_rows)
            )
        return self.slot_row[prepared.slots], picked, new_rows

    def grow(self, pool: int) -> None:
        """Make the pool `pool` rows (the collection has grown the table's storage): the new rows join the free list
        below the free ones, so the lower rows are handed out first."""
        added = pool - self.pool
        free = torch.empty(pool + 1, dtype=torch.int64, device=self.device)
        free[:added] = torch.arange(pool - 1, self.pool - 1, -1, device=self.device)
        free[added : added + self.top] = self.free[: self.top]
        self.free, self.pool, self.top = free, pool, self.top + added

    # ---- eviction -------------------------------------------------------------------------------------------------
    def _expire(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """At a sweep step (module docstring), forget keys not seen for more than evict_after_steps steps, on the
        device: (keys, rows) freed, as tensors; other steps touch nothing."""
        zero = torch.zeros((), dtype=torch.int64, device=self.device)
        if not self.spec.evict_after_steps:
            return zero, zero
        every = expire_every(self.spec.evict_after_steps)
        if self.next_sweep is None:
            self.next_sweep = -(-step // every) * every
        if step < self.next_sweep:
            return zero, zero
        self.next_sweep = (step // every + 1) * every
        stale = (self.slot_keys >= 0) & (step - self.slot_seen > self.spec.evict_after_steps)
        return stale.sum(), self._remove(stale)

    def _remove(self, mask: torch.Tensor) -> torch.Tensor:
        """Drop the keys of the masked slots: their rows go back on the free list (at positions top, top + 1, ... as
        they come); returns the number of rows freed (a device tensor: the caller counts it after the sync)."""
        has_row = mask & (self.slot_row >= 0)
        position = self.top + torch.cumsum(has_row, 0) - 1
        self.free.scatter_(0, torch.where(has_row, position, self.pool), self.slot_row)
        if self.spec.evict_when_full:
            shards = self._local_shard(self.slot_keys.clamp(min=0))
            self.shard_live.index_add_(0, shards, -has_row.long())
        # count and seen of a tombstone are never read (prepare and insert_entries set them for a key that
        # takes its slot): two passes over the index fewer
        self.slot_keys.masked_fill_(mask, TOMBSTONE)
        self.slot_row.masked_fill_(mask, -1)
        return has_row.sum()

    def _evict_least_recent(self, over: list[int], step: int) -> None:
        """Free over[s] rows of each local key shard s: its least recently seen keys (then the smallest keys), never
        keys seen in this step. Raises naming the table when a shard cannot free enough."""
        candidates = ((self.slot_row >= 0) & (self.slot_seen < step)).nonzero().squeeze(1)
        keys, seen = self.slot_keys[candidates], self.slot_seen[candidates]
        order = torch.argsort(keys, stable=True)
        order = order[torch.argsort(seen[order], stable=True)]
        shard = self._local_shard(keys)[order]
        order = order[torch.argsort(shard, stable=True)]
        shard = self._local_shard(keys[order])
        available = torch.bincount(shard, minlength=self.local_shards).tolist()
        for s, (o, a) in enumerate(zip(over, available, strict=True)):
            if o > a:
                raise DynamicTableFull(
                    f"dynamic table {self.name!r}: key shard {self.rank + s * self.world_size} of "
                    f"{self.spec.key_shards} holds {self.shard_capacity} rows "
                    f"(capacity={self.spec.capacity} / key_shards) and this step needs "
                    f"{o} more than it can free ({a} keys not seen in this step; {self.live} live keys on rank "
                    f"{self.rank}); raise capacity"
                )
        first = torch.searchsorted(shard, torch.arange(self.local_shards, device=self.device))
        rank_in_shard = torch.arange(shard.numel(), device=self.device) - first[shard]
        limit = torch.tensor(over, device=self.device).clamp(min=0)
        victims = torch.zeros_like(self.slot_keys, dtype=torch.bool)
        victims[candidates[order[rank_in_shard < limit[shard]]]] = True
        freed = int(self._remove(victims))
        self.top += freed
        self.evicted += freed
        self.entries -= freed

    # ---- state ----------------------------------------------------------------------------------------------------
    def entries_state(self) -> dict[str, torch.Tensor]:
        """Every key held, sorted: keys, row (-1: pending), count (lookups before admission), seen (last step)."""
        held = (self.slot_keys >= 0).nonzero().squeeze(1)
        keys = self.slot_keys[held]
        order = torch.argsort(keys)
        held = held[order]
        return {
            "keys": keys[order],
            "row": self.slot_row[held],
            "count": self.slot_count[held],
            "seen": self.slot_seen[held],
        }

    def insert_entries(
        self, keys: torch.Tensor, count: torch.Tensor, seen: torch.Tensor, admitted: torch.Tensor
    ) -> Prepared:
        """Restore keys (checkpoint, warm start): as a step's prepare, with the admission decided by the caller."""
        self._ensure_slots(keys.numel())
        slots, inserted = find_or_insert(self.slot_keys, keys, True)
        if not bool(inserted.all()):
            raise ValueError(
                f"dynamic table {self.name!r}: restored keys are already held (duplicates in the source)"
            )
        self.slot_count[slots], self.slot_seen[slots] = count, seen
        self.used += keys.numel()
        self.entries += keys.numel()
        num = int(admitted.sum())
        if self.spec.evict_when_full:
            per_shard = torch.bincount(
                self._local_shard(keys[admitted]), minlength=self.local_shards
            )
            if bool((self.shard_live + per_shard > self.shard_capacity).any()):
                raise DynamicTableFull(
                    f"dynamic table {self.name!r}: the restored keys exceed capacity="
                    f"{self.spec.capacity} ({self.shard_capacity} rows per key shard)"
                )
        return Prepared(keys, count, slots, admitted, torch.zeros(0), num)

    def take_counters(self, count: bool = True) -> tuple[int, int]:
        """(rows admitted, rows evicted) since the last call; count=False leaves them out of the totals."""
        out = (self.admitted, self.evicted)
        if count:
            self.admitted_total += self.admitted
            self.evicted_total += self.evicted
        self.admitted = self.evicted = 0
        return out
