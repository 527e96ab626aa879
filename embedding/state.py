"""Tables as state: the weights digest, full state dicts, checkpoint shards and export rows of a
ShardedEmbeddingCollection (mixed into it).

Everything works shard by shard: a table is only gathered where a caller asks for its full state (tests,
small tables); the digest, checkpoints and exports never gather a table (exports gather the rows they write).
Static tables are addressed by row id, dynamic ones by key: their state is keys and rows (of live keys),
plus the keys counted and not yet admitted ("pending_*").
"""

from __future__ import annotations

import torch

from kernels.hashing import splitmix64

# odd multipliers of the weights digest (table_digests): odd, so multiplying by them is a bijection mod 2^64
_DIGEST_K1 = -7046029254386353131  # 0x9E3779B97F4A7C15 as int64
_DIGEST_K2 = -4658895280553007687  # 0xBF58476D1CE4E5B9 as int64
_LOW32 = (1 << 32) - 1


def _add_digest(sums: torch.Tensor, positions: torch.Tensor, bits: torch.Tensor, key: int) -> None:
    """sums [2] (low, high 32-bit halves) += sum of splitmix64(position * K1 ^ bits * K2 ^ key), carried."""
    h = splitmix64(positions * _DIGEST_K1 ^ bits * _DIGEST_K2 ^ key)
    sums[0] += (h & _LOW32).sum()
    sums[1] += ((h >> 32) & _LOW32).sum()
    sums[1] += sums[0] >> 32  # carry, so neither half outgrows int64 over many chunks
    sums[0] &= _LOW32
    sums[1] &= _LOW32


def _cpu(value: torch.Tensor) -> torch.Tensor:
    """A state tensor on the host: floating point as float32 (bf16/fp16 storage), integers as they are."""
    return value.detach().cpu().float() if value.is_floating_point() else value.detach().cpu()


class EmbeddingStateMixin:
    """table_digests, full_state_dict and load_full_state_dict of ShardedEmbeddingCollection."""

    def table_digests(self, chunk_elems: int = 1 << 22) -> list[int]:
        """A 64-bit digest of every table's weights, the same under any plan and world size (collective).

        Each element contributes splitmix64(global position * K1 ^ float32 bits * K2 ^ table key): a
        bijection of its bits at a fixed position, so changing any one value changes the digest. A dynamic
        table's position is splitmix64(key) * D + column over its live keys: independent of the slots, rows
        and ranks that hold them. The
        contributions are summed mod 2^64 (order-free), shard by shard on the device in chunks of
        chunk_elems, then over ranks by one all-reduce of 2 x T int64 (32-bit halves, so the sums
        cannot overflow). Replicated tables count once (rank 0's copy)."""
        device = self.weight.device
        sums = torch.zeros(len(self.tables), 2, dtype=torch.int64, device=device)  # low, high 32-bit halves
        columns = torch.arange(self.dim, dtype=torch.int64, device=device)
        for t, table in enumerate(self.tables):
            placement = self.plan.placements[table.name].placement
            key = int(splitmix64(torch.tensor([t + 0x5EED], dtype=torch.int64))[0])
            if table.dynamic:
                self._dynamic_digest(t, key, sums[t], chunk_elems)
                continue
            if self.local_count[t] == 0 or (placement == "replicated" and self.rank != 0):
                continue
            # local row i of this table is global row first + i * step (row-wise: rank + i * W)
            first, step = (self.rank, self.world_size) if placement == "row" else (0, 1)
            base, rows_per_chunk = int(self.local_base[t]), max(1, chunk_elems // max(self.dim, 1))
            for start in range(0, self.local_count[t], rows_per_chunk):
                block = self.weight[base + start : base + min(start + rows_per_chunk, self.local_count[t])]
                bits = block.float().view(torch.int32).to(torch.int64) & _LOW32
                rows = first + (start + torch.arange(block.shape[0], dtype=torch.int64, device=device)) * step
                _add_digest(sums[t], rows[:, None] * self.dim + columns, bits, key)
        self.exchange.all_reduce_(sums)
        return [((int(hi) << 32) + int(lo)) & ((1 << 64) - 1) for lo, hi in sums.tolist()]

    def _dynamic_digest(self, t: int, key: int, sums: torch.Tensor, chunk_elems: int) -> None:
        keys, rows = self._dynamic_live(t)
        columns = torch.arange(self.dim, dtype=torch.int64, device=keys.device)
        rows_per_chunk = max(1, chunk_elems // max(self.dim, 1))
        for start in range(0, keys.numel(), rows_per_chunk):
            chunk = slice(start, start + rows_per_chunk)
            bits = self.weight[rows[chunk]].float().view(torch.int32).to(torch.int64) & _LOW32
            _add_digest(sums, splitmix64(keys[chunk])[:, None] * self.dim + columns, bits, key)

    def _dynamic_live(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(keys, storage rows) of dynamic table t's live keys on this rank, sorted by key."""
        entries = self.dynamic[t].entries_state()
        live = entries["row"] >= 0
        return entries["keys"][live], entries["row"][live] + self.region[t]

    def full_state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        """Every table's full weights, optimizer state (float32, CPU) and access statistics (int64), on every rank."""
        state = self._tracked()
        mine = {}
        for t, table in enumerate(self.tables):
            if self.plan.placements[table.name].placement == "replicated" and self.rank != 0:
                continue
            base, n = int(self.local_base[t]), self.local_count[t]
            if n:
                mine[table.name] = (self.local_global_rows(t), {k: _cpu(v[base : base + n]) for k, v in state.items()})
        for t in self.dynamic:
            keys, rows = self._dynamic_live(t)
            mine[self.tables[t].name] = (keys.cpu(), {k: _cpu(v[rows]) for k, v in state.items()})
        parts = self.exchange.gather_objects(mine)
        full = {}
        for table in self.tables:
            if table.dynamic:  # live keys of all ranks, sorted by key
                got = [part[table.name] for part in parts]
                keys = torch.cat([k for k, _ in got])
                order = torch.argsort(keys)
                full[table.name] = {"keys": keys[order], **{k: torch.cat([v[k] for _, v in got])[order] for k in state}}
                continue
            out = {k: torch.zeros(table.num_embeddings, *v.shape[1:], dtype=torch.float32 if v.is_floating_point() else v.dtype)
                   for k, v in state.items()}
            for part in parts:
                if table.name in part:
                    rows, values = part[table.name]
                    for k, v in values.items():
                        out[k][rows] = v
            full[table.name] = out
        return full

    def load_full_state_dict(self, full: dict[str, dict[str, torch.Tensor]]) -> None:
        """Take this rank's rows from full per-table state (from full_state_dict of any plan).

        Access statistics (freq, last_step) missing from the state are left as they are (dynamic tables: zero)."""
        state = self._tracked()
        for t, table in enumerate(self.tables):
            if table.name not in full:
                raise KeyError(f"embedding state has no table {table.name!r}")
            if table.dynamic:
                self.load_table_state(t, full[table.name], "embedding state", optional=("freq", "last_step"))
                continue
            rows = self.local_global_rows(t)
            base = int(self.local_base[t])
            for k, v in state.items():
                if k not in full[table.name] and k in ("freq", "last_step"):
                    continue
                if k not in full[table.name]:
                    raise KeyError(f"embedding state of table {table.name!r} has no {k!r}")
                src = full[table.name][k]
                if src.shape[0] != table.num_embeddings:
                    raise ValueError(f"table {table.name!r}: state {k!r} has {src.shape[0]} rows, "
                                     f"expected {table.num_embeddings}")
                v[base : base + rows.numel()] = src[rows].to(v.device, v.dtype)

    # ---- checkpoint shards, warm starts, exports --------------------------------------------------------------------
    def owned_rows(self, t: int, rows: torch.Tensor) -> torch.Tensor:
        """Mask of the rows (table-local ids) of static table t that this rank stores under its plan."""
        p = self.plan.placements[self.tables[t].name]
        if p.placement == "row":
            return rows % self.world_size == self.rank
        if p.placement == "table":
            return torch.full_like(rows, p.owner == self.rank, dtype=torch.bool)
        return torch.ones_like(rows, dtype=torch.bool)

    def shard_tables(self) -> dict[str, dict[str, torch.Tensor]]:
        """This rank's part of every table (CPU tensors): static tables' rows ("rows": their ids) and tracked values
        (replicated tables: rank 0 only); dynamic tables' live keys ("keys", "seen", "count") with their tracked
        values, and their pending keys ("pending_keys", "pending_count", "pending_seen")."""
        tables, tracked = {}, self._tracked()
        for t, table in enumerate(self.tables):
            if table.dynamic:
                e = self.dynamic[t].entries_state()
                live = e["row"] >= 0
                rows = e["row"][live] + self.region[t]
                tables[table.name] = {"keys": e["keys"][live].cpu(), "seen": e["seen"][live].cpu(),
                                      "count": e["count"][live].cpu(),
                                      **{k: v[rows].detach().cpu() for k, v in tracked.items()},
                                      **{f"pending_{k}": e[k][~live].cpu() for k in ("keys", "count", "seen")}}
            elif self.local_count[t] and (self.plan.placements[table.name].placement != "replicated" or self.rank == 0):
                base, n = int(self.local_base[t]), self.local_count[t]
                tables[table.name] = {"rows": self.local_global_rows(t),
                                      **{k: v[base : base + n].detach().cpu().clone() for k, v in tracked.items()}}
        return tables

    def load_table_state(self, t: int, state: dict[str, torch.Tensor], source: str, optional=()) -> None:
        """Take this rank's part of table t from a state of any world size and plan (shard_tables' format, or a
        full/export state: "keys" of a dynamic table, "rows" of a static one; full state dicts index rows by
        position). Static rows beyond the table are dropped (a warm start into a smaller table). Tracked values in
        `optional` may be missing (then zero for new keys, kept for static rows); others are an error naming them."""
        table, tracked = self.tables[t], self._tracked()
        missing = [k for k in tracked if k not in state and k not in optional]
        if missing:
            raise KeyError(f"{source}: table {table.name!r} has no {missing}")
        if not table.dynamic:
            rows = state["rows"]
            keep = self.owned_rows(t, rows) & (rows < table.num_embeddings)
            local = self.local_rows((rows[keep] + self.table_offsets[t].cpu()).to(self.table_offsets.device))
            for k, buf in tracked.items():
                if k in state:
                    buf[local] = state[k][keep].to(buf.device, buf.dtype)
            return
        shard, device = self.dynamic[t], self.weight.device
        keys = state["keys"].to(device)
        zeros = torch.zeros_like(keys)
        pending = state.get("pending_keys", keys[:0]).to(device)
        # live keys first, then pending ones (counted, no row); seen: the last step seen (an export has last_step)
        all_keys = torch.cat([keys, pending])
        count = torch.cat([state.get("count", zeros).to(device), state.get("pending_count", pending * 0).to(device)])
        seen = torch.cat([state.get("seen", state.get("last_step", zeros)).to(device),
                          state.get("pending_seen", pending * 0).to(device)])
        mine = shard.owner(all_keys) == self.rank
        admitted = torch.arange(all_keys.numel(), device=device) < keys.numel()
        prepared = shard.insert_entries(all_keys[mine], count[mine], seen[mine], admitted[mine])
        self._reserve(t, prepared.num_need)
        _, _, new_rows = shard.allocate(prepared)  # rows for the live keys, in their order
        shard.take_counters(count=False)  # restoring is not admitting
        target, mine_live = new_rows + self.region[t], mine[: keys.numel()]
        for k, buf in self._tracked().items():  # after _reserve: a growth reallocated the storage
            buf[target] = state[k].to(device)[mine_live].to(buf.dtype) if k in state else 0

    def export_rows(self, t: int, min_freq: int, since_step: int) -> tuple[torch.Tensor, ...] | None:
        """This rank's rows of table t to export (CPU): (keys, float32 values, freq, last_step) of rows looked up at
        least max(min_freq, 1) times and updated after since_step; keys are row ids (static) or raw keys (dynamic).
        None where another rank exports them (replicated tables: rank 0)."""
        table = self.tables[t]
        if table.dynamic:
            keys, rows = self._dynamic_live(t)
        elif self.plan.placements[table.name].placement == "replicated" and self.rank != 0:
            return None
        else:
            keys = self.local_global_rows(t).to(self.weight.device)
            rows = torch.arange(self.local_count[t], device=self.weight.device) + int(self.local_base[t])
        keep = (self.freq[rows] >= max(min_freq, 1)) & (self.last_step[rows] > since_step)
        rows = rows[keep]
        return keys[keep].cpu(), _cpu(self.weight[rows]), self.freq[rows].cpu(), self.last_step[rows].cpu()
