"""DynamicTables: a collection's dynamic tables (embedding.dynamic) in its three phases.

Segments. Keys travel in segments: segment 0 holds the static tables' fused keys (owned as in
embedding.layout), segment i >= 1 the raw keys of the i-th dynamic table (deduplicated within
the table, owner = its DynamicShard.owner). One all-to-all carries all of them: each rank's send
buffer is grouped by destination, then by segment, and a [W, S] count matrix (S segments) travels
first so the receiver knows where each segment's keys are. Every key's lookup count travels with
it (an int32 all-to-all beside the keys): owners admit keys by count in the forward, and the
backward reuses the counts.

Owner side. Dynamic keys map to rows through their table's hash index (training: find-or-insert,
admission, eviction, one sync for all tables; evaluation: lookups only). Each dynamic table's rows
sit in a storage of its own (embedding.storage), so that growth allocates that table's rows only.
The step's kernels run once over the static storage, where every dynamic key reads the static null
row (zeros), and once more per dynamic table over its own storage (serve, pool, update_values,
merge), whose results replace the null row's. A key without a row reads its table's null row (row
0 of its storage), which updates touch and reset_null_row() zeroes again: such keys read zeros and
get no update. On a single rank values read rows straight from the storages: input_dist gives
dynamic values their dedup (local_keys), compute their rows (fill_value_rows).
"""

from __future__ import annotations

import functools

import torch

from embedding.comm import Exchange
from embedding.dynamic import DynamicShard, DynamicTableFull, init_rows
from embedding.dynamic_steps import DynamicSteps, chunks
from embedding.layout import DYNAMIC_BASE, ShardLayout
from embedding.sparse_dist import SparseDist
from embedding.storage import RowStorage
from kernels import unique_partition


@functools.cache
def _one_table(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(table_offsets, table_owner) of a single table taking any non-negative key, owned by rank 0:
    dedup only. Made once per device, not copied there on every step."""
    return (
        torch.tensor([0, 2**63 - 1], dtype=torch.int64, device=device),
        torch.zeros(1, dtype=torch.int64, device=device),
    )


def dedup(keys: torch.Tensor):
    """(distinct keys in order of first occurrence, inverse) of raw int64 keys."""
    unique, _, inverse = unique_partition(keys, *_one_table(keys.device), 1)
    return unique, inverse


def _spans(bounds: list[int], features: list[int], device) -> torch.Tensor:
    """Value positions of the given features (feature f's values are bounds[f]:bounds[f + 1])."""
    parts = [
        torch.arange(bounds[f], bounds[f + 1], device=device)
        for f in features
        if bounds[f + 1] > bounds[f]
    ]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64, device=device)


class DynamicTables(DynamicSteps):
    """The DynamicShards of a collection ({table index: shard}, table order), their segments of the
    exchange, admission and eviction per training step, storage growth, restores and metrics."""

    def __init__(
        self,
        shards: dict[int, DynamicShard],
        features: list[str],
        layout: ShardLayout,
        storage: RowStorage,
        exchange: Exchange,
        seed: int,
    ):
        self.shards = shards
        self.layout, self.storage, self.exchange, self.seed = layout, storage, exchange, seed
        index = {f: i for i, f in enumerate(features)}
        tables = layout.tables
        # features of each segment: the static tables', then each dynamic table's
        self.segment_features = [[index[f] for t in tables if not t.dynamic for f in t.features]]
        self.segment_features += [[index[f] for f in tables[t].features] for t in shards]
        # each dynamic table's features: a range of the pooled output's (tables in order)
        self.feature_range = {
            t: (f[0], f[-1] + 1) if f else (0, 0)
            for t, f in zip(shards, self.segment_features[1:], strict=True)
        }
        for t in shards:
            storage.add_table(t, DYNAMIC_BASE + layout.count[t])

    def __len__(self) -> int:
        return len(self.shards)

    def reset_null_row(self) -> None:
        """Undo what an update did to the null rows: they read zeros and build up no state. One
        multi-tensor zero per dtype for the static null row and every dynamic table's."""
        n = self.layout.null_row
        rows = [v[n : n + 1] for v in self.storage.tracked().values()]
        rows += [v[:1] for s in self.storage.tables.values() for v in s.tracked().values()]
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for row in rows:
            by_dtype.setdefault(row.dtype, []).append(row)
        for group in by_dtype.values():
            torch._foreach_zero_(group)

    # ---- input_dist -----------------------------------------------------------------------------
    def _positions(self, kjt) -> tuple[list[int], list[torch.Tensor]]:
        """(first value of each feature and the end, value positions of each segment)."""
        bounds = kjt.offsets[:: max(kjt.batch_size, 1)].tolist()  # features' values (one sync)
        device = kjt.values.device
        return bounds, [_spans(bounds, f, device) for f in self.segment_features]

    def local_keys(self, kjt) -> list:
        """Single rank: per dynamic table (table, value positions, distinct keys, inverse,
        lookups, (first, end) of its values)."""
        out = []
        bounds, positions = self._positions(kjt)
        for t, pos in zip(self.shards, positions[1:], strict=True):
            unique, inverse = dedup(kjt.values[pos])
            counts = torch.zeros_like(unique).index_add_(0, inverse, torch.ones_like(inverse))
            f0, f1 = self.feature_range[t]
            out.append((t, pos, unique, inverse, counts, (bounds[f0], bounds[f1])))
        return out

    def _segments(self, kjt, value_table, positions):
        """(unique keys grouped by owner, [W] counts, inverse) of every segment."""
        layout, values = self.layout, kjt.values
        static = positions[0]
        keys = values[static] + layout.table_offsets[value_table[static]]
        segments = [
            unique_partition(
                keys,
                layout.table_offsets,
                layout.table_owner,
                layout.world_size,
                key_space=layout.num_keys,
            )
        ]
        for shard, pos in zip(self.shards.values(), positions[1:], strict=True):
            unique, inverse = dedup(values[pos])
            owner = shard.owner(unique)
            order = torch.argsort(owner, stable=True)
            position = torch.empty_like(order)
            position[order] = torch.arange(order.numel(), device=values.device)
            counts = torch.bincount(owner, minlength=layout.world_size)
            segments.append((unique[order], counts, position[inverse]))
        return segments

    def input_dist(self, kjt, value_table) -> SparseDist:
        """The exchange path's input_dist with segments (module docstring)."""
        values, device = kjt.values, kjt.values.device
        _, positions = self._positions(kjt)
        segments = self._segments(kjt, value_table, positions)
        send = torch.stack([counts for _, counts, _ in segments])  # [S, W]
        matrix = send.tolist()
        w, s_count = self.layout.world_size, len(segments)
        send_splits = [sum(matrix[s][r] for s in range(s_count)) for r in range(w)]
        unique_keys = torch.empty(sum(send_splits), dtype=torch.int64, device=device)
        inverse = torch.empty(values.numel(), dtype=torch.int64, device=device)
        for s, ((unique, counts, seg_inverse), pos) in enumerate(
            zip(segments, positions, strict=True)
        ):
            # buffer position of the j-th key of segment s, owned by r: r's start + earlier
            # segments' keys for r + (j - the keys of segment s owned by ranks before r)
            shift = [
                sum(send_splits[:r]) + sum(matrix[q][r] for q in range(s)) - sum(matrix[s][:r])
                for r in range(w)
            ]
            owner = torch.repeat_interleave(
                torch.arange(w, device=device), counts, output_size=unique.numel()
            )
            at = (
                torch.arange(unique.numel(), device=device)
                + torch.tensor(shift, device=device)[owner]
            )
            unique_keys[at] = unique
            inverse[pos] = at[seg_inverse]
        counts_out = send.t().contiguous().view(-1)
        received = self.exchange.exchange_counts(
            counts_out if self.exchange.distributed else counts_out.cpu()
        )
        recv_matrix = received.view(w, s_count).tolist()
        recv_splits = [sum(row) for row in recv_matrix]
        recv_keys, work = self.exchange.start(unique_keys, send_splits, recv_splits, ids=True)
        lookups = torch.zeros(unique_keys.numel(), dtype=torch.int32, device=device).index_add_(
            0, inverse, torch.ones_like(inverse, dtype=torch.int32)
        )
        recv_lookups, lookups_work = self.exchange.start(
            lookups, send_splits, recv_splits, ids=True
        )
        return SparseDist(
            kjt.batch_size,
            kjt.offsets,
            inverse,
            unique_keys,
            send_splits,
            recv_splits,
            recv_keys,
            work,
            segments=recv_matrix,
            recv_lookups=recv_lookups,
            _lookups_work=lookups_work,
            # per rank on the device, for the gradients' exchange (no host->device copy)
            send_counts=send.sum(0),
            recv_counts=received.view(w, s_count).sum(1),
        )

    # ---- compute ----------------------------------------------------------------------------------
    def local_rows(self, sd: SparseDist, step: int) -> torch.Tensor:
        """Owner side: static storage rows of every received key (dynamic keys: the null row);
        sd.pieces gets per dynamic table (table, positions, rows in its storage). Training admits
        keys for the update of the given step."""
        device = sd.recv_keys.device
        # (set by the host tier at input_dist: its rows made resident, mapped to their slots)
        local = self.static_rows(sd) if sd.owner_rows is None else sd.owner_rows
        spans = [chunks(sd.segments, s + 1, device) for s in range(len(self.shards))]
        if not torch.is_grad_enabled():
            rows = [
                self._absolute(t, self.shards[t].find_rows(sd.recv_keys[pos]))
                for t, pos in zip(self.shards, spans, strict=True)
            ]
            sd.pieces = list(zip(self.shards, spans, rows, strict=True))
            return local
        items, inverses = [], []
        for t, pos in zip(self.shards, spans, strict=True):
            unique, inverse = dedup(sd.recv_keys[pos])  # the same key from several senders
            counts = torch.zeros_like(unique).index_add_(0, inverse, sd.recv_lookups[pos].long())
            items.append((t, unique, counts))
            inverses.append(inverse)
        rows = [r[i] for i, r in zip(inverses, self._rows(items, step), strict=True)]
        sd.pieces = list(zip(self.shards, spans, rows, strict=True))
        return local

    def fill_value_rows(self, sd: SparseDist, step: int) -> None:
        """Single rank: dynamic values read the static null row (input_dist left them unset);
        sd.pieces gets per dynamic table (table, the bag offsets of its features into its values,
        None without values, and their rows in its storage)."""
        if not torch.is_grad_enabled():
            rows = [self._absolute(t, self.shards[t].find_rows(u)) for t, _, u, *_ in sd.dynamic]
        else:
            rows = self._rows([(t, u, counts) for t, _, u, _, counts, _ in sd.dynamic], step)
        sd.pieces, b = [], sd.batch_size
        for (t, pos, _, inverse, _, (first, end)), r in zip(sd.dynamic, rows, strict=True):
            sd.value_rows[pos] = self.layout.null_row
            f0, f1 = self.feature_range[t]
            offsets = sd.offsets[f0 * b : f1 * b + 1] - first if end > first else None
            sd.pieces.append((t, offsets, r[inverse]))

    def _absolute(self, t: int, rows: torch.Tensor) -> torch.Tensor:
        """Rows of table t's pool (-1: none) -> rows of its storage (its null row 0 for none)."""
        return torch.where(rows >= 0, rows + self.layout.base[t], 0)

    def _rows(
        self, items: list[tuple[int, torch.Tensor, torch.Tensor]], step: int
    ) -> list[torch.Tensor]:
        """Training: count, admit and evict the step's distinct keys (items: table, keys, lookups)
        of each dynamic table; returns their storage rows."""
        prepared = [self.shards[t].prepare(keys, counts, step) for t, keys, counts in items]
        # the step's one sync
        stats = torch.cat([p.stats for p in prepared]).tolist() if prepared else []
        pools, at = {}, 0
        for (t, _, _), p in zip(items, prepared, strict=True):
            n = p.stats.numel()
            pools[t] = self.shards[t].absorb(p, stats[at : at + n], step)
            at += n
        if any(pool > self.shards[t].pool for t, pool in pools.items()):
            self._resize(pools)
        return [self._admit(t, p) for (t, _, _), p in zip(items, prepared, strict=True)]

    def _admit(self, t: int, prepared) -> torch.Tensor:
        """Rows for the keys admitted by prepared (initialized rows, zero state, freq = earlier
        lookups); returns the storage rows of all its keys."""
        shard, storage = self.shards[t], self.storage.tables[t]
        rows, picked, new_rows = shard.allocate(prepared)
        keys = prepared.keys[picked]
        target = new_rows + self.layout.base[t]
        storage.weight[target] = init_rows(
            keys, self.seed, shard.salt, storage.weight.shape[1], shard.bound, storage.weight.dtype
        )
        for value in storage.state.values():
            value[target] = 0
        storage.freq[target] = shard.slot_count[prepared.slots[picked]] - prepared.counts[picked]
        storage.last_step[target] = 0
        return self._absolute(t, rows)

    # ---- growth, restores, metrics --------------------------------------------------------------
    def _resize(self, pools: dict[int, int]) -> None:
        """Grow dynamic table t's storage and pool to pools[t] rows: only its own storage is
        reallocated (other tables and the static rows are not touched)."""
        for t, rows in pools.items():
            shard = self.shards[t]
            if rows > shard.pool:
                self.storage.tables[t].resize(DYNAMIC_BASE + rows)
                self.layout.place_dynamic({t: rows})
                shard.grow(rows)

    def _reserve(self, t: int, extra: int) -> None:
        """Room for `extra` more live rows in dynamic table t (restoring keys), or an error naming
        the table."""
        shard = self.shards[t]
        needed = shard.live + extra
        if needed > shard.pool:
            if shard.max_pool is not None and needed > shard.max_pool:
                raise DynamicTableFull(
                    f"dynamic table {shard.name!r}: the restored state has {needed} keys for rank "
                    f"{self.layout.rank}, over its share {shard.max_pool} of max_capacity="
                    f"{shard.spec.max_capacity}; raise max_capacity"
                )
            self._resize({t: needed})

    def live(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(keys, storage rows) of dynamic table t's live keys on this rank, sorted by key."""
        entries = self.shards[t].entries_state()
        live = entries["row"] >= 0
        return entries["keys"][live], entries["row"][live] + self.layout.base[t]

    def load(self, t: int, state: dict[str, torch.Tensor]) -> None:
        """Take this rank's keys of dynamic table t from a state of any world size (format:
        embedding.state.load_table_state): live keys get rows and their tracked values (zero where
        the state has none)."""
        shard, device = self.shards[t], self.storage.weight.device
        keys = state["keys"].to(device)
        zeros = torch.zeros_like(keys)
        pending = state.get("pending_keys", keys[:0]).to(device)
        # live keys first, then pending ones (counted, no row); seen: the last step seen (an export
        # has last_step)
        all_keys = torch.cat([keys, pending])
        count = torch.cat(
            [
                state.get("count", zeros).to(device),
                state.get("pending_count", pending * 0).to(device),
            ]
        )
        seen = torch.cat(
            [
                state.get("seen", state.get("last_step", zeros)).to(device),
                state.get("pending_seen", pending * 0).to(device),
            ]
        )
        mine = shard.owner(all_keys) == self.layout.rank
        admitted = torch.arange(all_keys.numel(), device=device) < keys.numel()
        prepared = shard.insert_entries(all_keys[mine], count[mine], seen[mine], admitted[mine])
        self._reserve(t, prepared.num_need)
        _, _, new_rows = shard.allocate(prepared)  # rows for the live keys, in their order
        shard.take_counters(count=False)  # restoring is not admitting
        target, mine_live = new_rows + self.layout.base[t], mine[: keys.numel()]
        # after _reserve, which may have reallocated the table's storage
        for k, buf in self.storage.tracked(t).items():
            buf[target] = state[k].to(device)[mine_live].to(buf.dtype) if k in state else 0

    def metrics(self) -> dict[str, dict[str, int]]:
        """Collective. Per dynamic table over all ranks: live keys (with a row), pending keys
        (counted, not admitted), rows allocated, the rows admitted and evicted since the last call,
        and since the process started."""
        if not self.shards:
            return {}
        values = []
        for shard in self.shards.values():
            admitted, evicted = shard.take_counters()
            values.append(
                [
                    shard.live,
                    shard.entries - shard.live,
                    shard.pool,
                    admitted,
                    evicted,
                    shard.admitted_total,
                    shard.evicted_total,
                ]
            )
        device = self.storage.weight.device
        totals = self.exchange.all_reduce_(torch.tensor(values, dtype=torch.int64, device=device))
        names = (
            "live",
            "pending",
            "rows_allocated",
            "admitted",
            "evicted",
            "admitted_total",
            "evicted_total",
        )
        return {
            self.layout.tables[t].name: dict(zip(names, row, strict=True))
            for t, row in zip(self.shards, totals.tolist(), strict=True)
        }
