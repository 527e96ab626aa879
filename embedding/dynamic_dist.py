"""The three phases of ShardedEmbeddingCollection for a collection with dynamic tables (embedding.dynamic).

Segments. Keys travel in segments: segment 0 holds the static tables' fused keys (table offset + id,
deduplicated and owned as before), segment i >= 1 the raw keys of the i-th dynamic table (deduplicated
within the table, owner = its DynamicShard.owner). One all-to-all carries all of them: each rank's send
buffer is grouped by destination, then by segment, and a [W, S] count matrix (S segments) travels first
so the receiver knows where each segment's keys are. The lookup count of every key travels with the keys
(an int32 all-to-all started beside them), because owners admit keys by count in the forward pass; the
backward then reuses those counts instead of sending them with the gradients.

Owner side. Static keys map to rows through local_rows(); dynamic keys through their table's hash index
(training: find-or-insert, admission, eviction, at most one sync for all tables; evaluation: lookups
only). A key without a row reads the null row, a zero row of the storage that every update touches and
_reset_null_row() zeroes again, so such keys read zeros and get no update. W = 1 keeps the single-rank
path (values read rows straight from the storage): input_dist gives dynamic values their dedup, compute
their rows.

Storage. [static rows | null row | scratch row | dynamic table 1's rows | dynamic table 2's rows | ...]:
the scratch row takes writes that must land nowhere; a dynamic region grows by reallocating the storage
(and optimizer state, freq, last_step) with the regions moved apart (_resize_dynamic).
"""

from __future__ import annotations

import functools

import torch

from embedding.dynamic import DynamicShard, DynamicTableFull, init_rows
from kernels import unique_partition


@functools.cache
def _one_table(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(table_offsets, table_owner) of a single table taking any non-negative key, owned by rank 0: dedup only.
    Made once per device, not copied there on every step."""
    return (torch.tensor([0, 2**63 - 1], dtype=torch.int64, device=device),
            torch.zeros(1, dtype=torch.int64, device=device))


def dedup(keys: torch.Tensor):
    """(distinct keys in order of first occurrence, inverse) of raw int64 keys (kernels.unique_partition, hashed)."""
    unique, _, inverse = unique_partition(keys, *_one_table(keys.device), 1)
    return unique, inverse


def _spans(bounds: list[int], features: list[int], device) -> torch.Tensor:
    """Value positions of the given features (feature f's values are bounds[f]:bounds[f + 1])."""
    parts = [torch.arange(bounds[f], bounds[f + 1], device=device) for f in features if bounds[f + 1] > bounds[f]]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64, device=device)


def _chunks(counts: list[list[int]], segment: int, device) -> torch.Tensor:
    """Positions of one segment's keys in a buffer laid out rank-major, then segment (counts[rank][segment])."""
    parts, offset = [], 0
    for row in counts:
        for s, n in enumerate(row):
            if s == segment and n:
                parts.append(torch.arange(offset, offset + n, device=device))
            offset += n
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64, device=device)


class DynamicDistMixin:
    """What ShardedEmbeddingCollection adds for dynamic tables (self.dynamic: {table index: DynamicShard})."""

    def _setup_dynamic(self, local_base: list[int], static_rows: int, device) -> int:
        """Create the shards and their storage regions; returns the local storage rows."""
        self.dynamic = {t: DynamicShard(table, self.rank, self.world_size, device)
                        for t, table in enumerate(self.tables) if table.dynamic}
        self.num_static_rows = static_rows
        if not self.dynamic:
            return static_rows
        self.null_row, self.scratch_row = static_rows, static_rows + 1
        cursor = static_rows + 2
        self.region = {}  # host copy of the dynamic tables' local_base (reading the device buffer would sync)
        for t, shard in self.dynamic.items():
            local_base[t] = self.region[t] = cursor
            cursor += shard.pool
        features = {f: i for i, f in enumerate(self.features)}
        self._segment_features = [[features[f] for t in self.tables if not t.dynamic for f in t.features]]
        self._segment_features += [[features[f] for f in self.tables[t].features] for t in self.dynamic]
        return cursor

    def _reset_null_row(self) -> None:
        """Undo what an update did to the null row: it must read zeros, and no state may build up in it."""
        for value in self._tracked().values():
            value[self.null_row] = 0

    # ---- input_dist ---------------------------------------------------------------------------------------------
    def _dynamic_input_dist(self, kjt, value_table, sparse_dist_cls):
        values, device = kjt.values, kjt.values.device
        bounds = kjt.offsets[:: max(kjt.batch_size, 1)].tolist()  # features' value ranges (one sync)
        positions = [_spans(bounds, features, device) for features in self._segment_features]
        if self.single_rank:
            rows = values + self.local_base[value_table]  # static values' rows; compute fills in the dynamic ones
            dynamic = []
            for (t, _), pos in zip(self.dynamic.items(), positions[1:], strict=True):
                unique, inverse = dedup(values[pos])
                counts = torch.zeros_like(unique).index_add_(0, inverse, torch.ones_like(inverse))
                dynamic.append((t, pos, unique, inverse, counts))
            return sparse_dist_cls(kjt.batch_size, kjt.offsets, rows, rows[:0], [0], [0], value_rows=rows,
                                   dynamic=dynamic)
        static = positions[0]
        keys = values[static] + self.table_offsets[value_table[static]]
        segments = [unique_partition(keys, self.table_offsets, self.table_owner, self.world_size, key_space=self.num_keys)]
        for (_, shard), pos in zip(self.dynamic.items(), positions[1:], strict=True):
            unique, inverse = dedup(values[pos])
            owner = shard.owner(unique)
            order = torch.argsort(owner, stable=True)
            position = torch.empty_like(order)
            position[order] = torch.arange(order.numel(), device=device)
            counts = torch.bincount(owner, minlength=self.world_size)
            segments.append((unique[order], counts, position[inverse]))
        send = torch.stack([counts for _, counts, _ in segments])  # [S, W]
        matrix = send.tolist()
        w, s_count = self.world_size, len(segments)
        send_splits = [sum(matrix[s][r] for s in range(s_count)) for r in range(w)]
        unique_keys = torch.empty(sum(send_splits), dtype=torch.int64, device=device)
        inverse = torch.empty(values.numel(), dtype=torch.int64, device=device)
        for s, ((unique, counts, seg_inverse), pos) in enumerate(zip(segments, positions, strict=True)):
            # buffer position of the j-th key of segment s, owned by r: r's start + earlier segments' keys for r
            # + (j - the keys of segment s owned by ranks before r)
            shift = [sum(send_splits[:r]) + sum(matrix[q][r] for q in range(s)) - sum(matrix[s][:r]) for r in range(w)]
            owner = torch.repeat_interleave(torch.arange(w, device=device), counts, output_size=unique.numel())
            at = torch.arange(unique.numel(), device=device) + torch.tensor(shift, device=device)[owner]
            unique_keys[at] = unique
            inverse[pos] = at[seg_inverse]
        counts_out = send.t().contiguous().view(-1)
        received = self.exchange.exchange_counts(counts_out.cpu() if not self.exchange.distributed else counts_out)
        recv_matrix = received.view(w, s_count).tolist()
        recv_splits = [sum(row) for row in recv_matrix]
        recv_keys, work = self.exchange.start(unique_keys, send_splits, recv_splits)
        lookups = torch.zeros(unique_keys.numel(), dtype=torch.int32, device=device).index_add_(
            0, inverse, torch.ones_like(inverse, dtype=torch.int32))
        recv_lookups, lookups_work = self.exchange.start(lookups, send_splits, recv_splits)
        return sparse_dist_cls(kjt.batch_size, kjt.offsets, inverse, unique_keys, send_splits, recv_splits, recv_keys,
                               work, segments=recv_matrix, recv_lookups=recv_lookups, _lookups_work=lookups_work)

    # ---- compute --------------------------------------------------------------------------------------------------
    def _dynamic_local_rows(self, sd) -> torch.Tensor:
        """Owner side: local rows of every received key (static and dynamic segments)."""
        device = sd.recv_keys.device
        local = torch.empty(sd.recv_keys.numel(), dtype=torch.int64, device=device)
        static = _chunks(sd.segments, 0, device)
        local[static] = self.local_rows(sd.recv_keys[static])
        chunks = [_chunks(sd.segments, s + 1, device) for s in range(len(self.dynamic))]
        if not torch.is_grad_enabled():
            for t, pos in zip(self.dynamic, chunks, strict=True):
                local[pos] = self._absolute(t, self.dynamic[t].find_rows(sd.recv_keys[pos]))
            return local
        items, inverses = [], []
        for t, pos in zip(self.dynamic, chunks, strict=True):
            unique, inverse = dedup(sd.recv_keys[pos])  # the same key from several senders
            counts = torch.zeros_like(unique).index_add_(0, inverse, sd.recv_lookups[pos].long())
            items.append((t, unique, counts))
            inverses.append(inverse)
        for pos, inverse, rows in zip(chunks, inverses, self._dynamic_rows(items), strict=True):
            local[pos] = rows[inverse]
        return local

    def _fill_value_rows(self, sd) -> None:
        """Single rank: the storage row of every dynamic value (input_dist left them unset)."""
        if not torch.is_grad_enabled():
            for t, pos, unique, inverse, _ in sd.dynamic:
                sd.value_rows[pos] = self._absolute(t, self.dynamic[t].find_rows(unique))[inverse]
            return
        rows = self._dynamic_rows([(t, unique, counts) for t, _, unique, _, counts in sd.dynamic])
        for (_, pos, _, inverse, _), r in zip(sd.dynamic, rows, strict=True):
            sd.value_rows[pos] = r[inverse]

    def _absolute(self, t: int, rows: torch.Tensor) -> torch.Tensor:
        return torch.where(rows >= 0, rows + self.region[t], self.null_row)

    def _dynamic_rows(self, items: list[tuple[int, torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
        """Training: count, admit and evict the step's distinct keys of each dynamic table; their storage rows."""
        step = self.num_updates + 1  # the step whose backward will update these rows
        prepared = [self.dynamic[t].prepare(keys, counts, step) for t, keys, counts in items]
        stats = torch.cat([p.stats for p in prepared]).tolist() if prepared else []  # the step's one sync
        pools, at = {}, 0
        for (t, _, _), p in zip(items, prepared, strict=True):
            n = p.stats.numel()
            pools[t] = self.dynamic[t].absorb(p, stats[at : at + n], step)
            at += n
        if any(pool > self.dynamic[t].pool for t, pool in pools.items()):
            self._resize_dynamic(pools)
        return [self._admit(t, p) for (t, _, _), p in zip(items, prepared, strict=True)]

    def _admit(self, t: int, prepared) -> torch.Tensor:
        """Rows for the keys admitted by prepared (initialized rows, zero state, freq = earlier lookups)."""
        shard = self.dynamic[t]
        rows, picked, new_rows = shard.allocate(prepared)
        keys = prepared.keys[picked]
        target = new_rows + self.region[t]
        self.weight[target] = init_rows(keys, self.seed, shard.salt, self.dim, shard.bound, self.weight.dtype)
        for value in self._state().values():
            value[target] = 0
        self.freq[target] = shard.slot_count[prepared.slots[picked]] - prepared.counts[picked]
        self.last_step[target] = 0
        return self._absolute(t, rows)

    def _resize_dynamic(self, pools: dict[int, int]) -> None:
        """Reallocate the storage with dynamic table t's region grown to pools[t] rows (regions in table order)."""
        keep = self.num_static_rows + 2
        bases, cursor = {}, keep
        for t, shard in self.dynamic.items():
            bases[t] = cursor
            cursor += max(pools.get(t, shard.pool), shard.pool)
        for name, old in self._tracked().items():
            new = torch.zeros(cursor, *old.shape[1:], dtype=old.dtype, device=old.device)
            new[:keep] = old[:keep]
            for t, shard in self.dynamic.items():
                start = self.region[t]
                new[bases[t] : bases[t] + shard.pool] = old[start : start + shard.pool]
            setattr(self, name, new)
        for t, shard in self.dynamic.items():
            self.local_base[t] = self.region[t] = bases[t]
            if pools.get(t, 0) > shard.pool:
                shard.grow(pools[t])
        self.num_local_rows = cursor
        self.local_space[1] = cursor

    def _reserve(self, t: int, extra: int) -> None:
        """Room for `extra` more live rows in dynamic table t (restoring keys), or an error naming the table."""
        shard = self.dynamic[t]
        needed = shard.live + extra
        if needed > shard.pool:
            if shard.max_pool is not None and needed > shard.max_pool:
                raise DynamicTableFull(f"dynamic table {shard.name!r}: the restored state has {needed} keys for rank "
                                       f"{self.rank}, over its share {shard.max_pool} of max_capacity="
                                       f"{shard.spec.max_capacity}; raise max_capacity")
            self._resize_dynamic({t: needed})

    # ---- metrics ----------------------------------------------------------------------------------------------------
    def dynamic_metrics(self) -> dict[str, dict[str, int]]:
        """Collective. Per dynamic table over all ranks: live keys (with a row), pending keys (counted, not admitted),
        rows allocated, the rows admitted and evicted since the last call, and since the process started."""
        if not self.dynamic:
            return {}
        values = []
        for shard in self.dynamic.values():
            admitted, evicted = shard.take_counters()
            values.append([shard.live, shard.entries - shard.live, shard.pool, admitted, evicted, shard.admitted_total,
                           shard.evicted_total])
        totals = self.exchange.all_reduce_(torch.tensor(values, dtype=torch.int64, device=self.weight.device)).tolist()
        names = ("live", "pending", "rows_allocated", "admitted", "evicted", "admitted_total", "evicted_total")
        return {self.tables[t].name: dict(zip(names, row, strict=True)) for t, row in zip(self.dynamic, totals, strict=True)}
