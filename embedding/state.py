"""Tables as state: the weights digest, full state dicts, checkpoint shards and export rows of a
collection, from its layout, row storage and dynamic tables.

Everything works shard by shard: a table is only gathered where a caller asks for its full state
(tests, small tables); the digest, checkpoints and exports never gather a table (exports gather the
rows they write). Static tables are addressed by row id, dynamic ones by key: their state is keys
and rows (of live keys), plus the keys counted and not yet admitted ("pending_*").
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import torch

from embedding.comm import Exchange
from embedding.dynamic_tables import DynamicTables
from embedding.layout import ShardLayout
from embedding.storage import RowStorage
from kernels.hashing import splitmix64

# multipliers of the weights digest (table_digests): odd, so multiplying by one is a bijection
# mod 2^64
DIGEST_K1 = -7046029254386353131  # 0x9E3779B97F4A7C15 as int64
DIGEST_K2 = -4658895280553007687  # 0xBF58476D1CE4E5B9 as int64
_LOW32 = (1 << 32) - 1


def _add_digest(sums: torch.Tensor, positions: torch.Tensor, bits: torch.Tensor, key: int) -> None:
    """sums [2] (low, high 32-bit halves) += sum of splitmix64(position * K1 ^ bits * K2 ^ key),
    carried."""
    h = splitmix64(positions * DIGEST_K1 ^ bits * DIGEST_K2 ^ key)
    sums[0] += (h & _LOW32).sum()
    sums[1] += ((h >> 32) & _LOW32).sum()
    sums[1] += sums[0] >> 32  # carry, so neither half outgrows int64 over many chunks
    sums[0] &= _LOW32
    sums[1] &= _LOW32


def _cpu(value: torch.Tensor) -> torch.Tensor:
    """A state tensor on the host: floating point as float32 (bf16/fp16 storage), integers as is."""
    return value.detach().cpu().float() if value.is_floating_point() else value.detach().cpu()


def _bits(block: torch.Tensor) -> torch.Tensor:
    """float32 bits of stored values, as non-negative int64."""
    return block.float().view(torch.int32).to(torch.int64) & _LOW32


def _digest_key(t: int, name: str) -> int:
    """The key mixed into the digest of table t's tracked tensor `name` (the weights keep the key
    they always had, so weights digests stay comparable)."""
    seed = t + 0x5EED
    if name != "weight":
        seed ^= zlib.crc32(name.encode()) << 24
    return int(splitmix64(torch.tensor([seed], dtype=torch.int64))[0])


def _value_bits(block: torch.Tensor) -> torch.Tensor:
    """Stored values as non-negative int64 bits: floats by their float32 bits, integers as is."""
    return _bits(block) if block.is_floating_point() else block.to(torch.int64)


def _digest_table(
    sums: torch.Tensor,
    layout: ShardLayout,
    dynamic: DynamicTables,
    t: int,
    values: torch.Tensor,
    key: int,
    chunk_elems: int,
) -> None:
    """sums [2] += this rank's contributions of table t's tensor `values` ([local rows, C])."""
    table, device, width = layout.tables[t], values.device, values.shape[1]
    columns = torch.arange(width, dtype=torch.int64, device=device)
    rows_per_chunk = max(1, chunk_elems // max(width, 1))
    if table.dynamic:
        keys, rows = dynamic.live(t)
        for start in range(0, keys.numel(), rows_per_chunk):
            chunk = slice(start, start + rows_per_chunk)
            positions = splitmix64(keys[chunk])[:, None] * width + columns
            _add_digest(sums, positions, _value_bits(values[rows[chunk]]), key)
        return
    if layout.count[t] == 0 or not layout.primary(t):
        return
    # local row i of this table is global row first + i * step (row-wise: rank + i * W)
    first, step = (layout.rank, layout.world_size) if layout.kinds[t] == "row" else (0, 1)
    base, n = layout.base[t], layout.count[t]
    for start in range(0, n, rows_per_chunk):
        block = values[base + start : base + min(start + rows_per_chunk, n)]
        local = start + torch.arange(block.shape[0], dtype=torch.int64, device=device)
        rows = first + local * step
        _add_digest(sums, rows[:, None] * width + columns, _value_bits(block), key)


def tracked_digests(
    layout: ShardLayout,
    storage: RowStorage,
    dynamic: DynamicTables,
    exchange: Exchange,
    names: tuple[str, ...] = ("weight",),
    chunk_elems: int = 1 << 22,
) -> list[list[int]]:
    """[table][name]: a 64-bit digest of each named tracked tensor (weights, optimizer state) of
    every table, the same under any plan and world size (collective).

    Each element contributes splitmix64(global position * K1 ^ value bits * K2 ^ key): a bijection
    of its bits at a fixed position, so changing any one value changes the digest. A tensor of C
    values per row puts element (row, c) at position row * C + c; a dynamic table's rows are at
    splitmix64(key) over its live keys: independent of the slots, rows and ranks that hold them.
    The key differs per table and tensor. The contributions are summed mod 2^64 (order-free),
    shard by shard on the device in chunks of chunk_elems, then over ranks by one all-reduce of
    2 x T x len(names) int64 (32-bit halves, so the sums cannot overflow). Replicated tables count
    once (rank 0's)."""
    tracked = storage.tracked()
    # low, high 32-bit halves
    sums = torch.zeros(
        len(layout.tables), len(names), 2, dtype=torch.int64, device=storage.weight.device
    )
    for t in range(len(layout.tables)):
        for i, name in enumerate(names):
            values = tracked[name]  # [rows] or [rows, ...] -> [rows, C] (a rank may hold 0 rows)
            values = values.unsqueeze(1) if values.dim() == 1 else values.flatten(1)
            key = _digest_key(layout.table_ids[t], name)
            _digest_table(sums[t, i], layout, dynamic, t, values, key, chunk_elems)
    exchange.all_reduce_(sums)
    return [
        [((int(hi) << 32) + int(lo)) & ((1 << 64) - 1) for lo, hi in table]
        for table in sums.tolist()
    ]


def table_digests(
    layout: ShardLayout,
    storage: RowStorage,
    dynamic: DynamicTables,
    exchange: Exchange,
    chunk_elems: int = 1 << 22,
) -> list[int]:
    """A 64-bit digest of every table's weights, the same under any plan and world size
    (collective; tracked_digests)."""
    digests = tracked_digests(layout, storage, dynamic, exchange, ("weight",), chunk_elems)
    return [d[0] for d in digests]


def full_state_dict(
    layout: ShardLayout, storage: RowStorage, dynamic: DynamicTables, exchange: Exchange
) -> dict[str, dict[str, torch.Tensor]]:
    """Every table's full weights, optimizer state (float32, CPU) and access statistics (int64), on
    every rank (collective)."""
    state = storage.tracked()
    mine = {}
    for t, table in enumerate(layout.tables):
        if table.dynamic:
            keys, rows = dynamic.live(t)
            mine[table.name] = (keys.cpu(), {k: _cpu(v[rows]) for k, v in state.items()})
        elif layout.primary(t) and layout.count[t]:
            base, n = layout.base[t], layout.count[t]
            values = {k: _cpu(v[base : base + n]) for k, v in state.items()}
            mine[table.name] = (layout.global_rows(t), values)
    parts = exchange.gather_objects(mine)
    full = {}
    for table in layout.tables:
        if table.dynamic:  # live keys of all ranks, sorted by key
            got = [part[table.name] for part in parts]
            keys = torch.cat([k for k, _ in got])
            order = torch.argsort(keys)
            full[table.name] = {
                "keys": keys[order],
                **{k: torch.cat([v[k] for _, v in got])[order] for k in state},
            }
            continue
        out = {
            k: torch.zeros(
                table.num_embeddings,
                *v.shape[1:],
                dtype=torch.float32 if v.is_floating_point() else v.dtype,
            )
            for k, v in state.items()
        }
        for part in parts:
            if table.name in part:
                rows, values = part[table.name]
                for k, v in values.items():
                    out[k][rows] = v
        full[table.name] = out
    return full


def load_full_state_dict(
    layout: ShardLayout,
    storage: RowStorage,
    dynamic: DynamicTables,
    full: dict[str, dict[str, torch.Tensor]],
) -> None:
    """Take this rank's rows from full per-table state (from full_state_dict of any plan).

    Access statistics (freq, last_step) missing from the state are left as they are (dynamic
    tables: zero)."""
    for t, table in enumerate(layout.tables):
        if table.name not in full:
            raise KeyError(f"embedding state has no table {table.name!r}")
        if table.dynamic:
            load_table_state(
                layout,
                storage,
                dynamic,
                t,
                full[table.name],
                "embedding state",
                optional=("freq", "last_step"),
            )
            continue
        base, n = layout.base[t], layout.count[t]
        rows = layout.global_rows(t)
        for k, v in storage.tracked().items():
            if k not in full[table.name] and k in ("freq", "last_step"):
                continue
            if k not in full[table.name]:
                raise KeyError(f"embedding state of table {table.name!r} has no {k!r}")
            src = full[table.name][k]
            if src.shape[0] != table.num_embeddings:
                raise ValueError(
                    f"table {table.name!r}: state {k!r} has {src.shape[0]} rows, "
                    f"expected {table.num_embeddings}"
                )
            v[base : base + n] = src[rows].to(v.device, v.dtype)


def shard_tables(
    layout: ShardLayout, storage: RowStorage, dynamic: DynamicTables
) -> dict[str, dict[str, torch.Tensor]]:
    """This rank's part of every table as CPU copies (tests, and the shards of the older checkpoint
    format; checkpoints stream through checkpoint_sources instead): static tables' rows ("rows": their ids) and
    tracked values (replicated tables: rank 0 only); dynamic tables' live keys ("keys", "seen",
    "count") with their tracked values, and their pending keys ("pending_keys", "pending_count",
    "pending_seen")."""
    tables, tracked = {}, storage.tracked()
    for t, table in enumerate(layout.tables):
        if table.dynamic:
            e = dynamic.shards[t].entries_state()
            live = e["row"] >= 0
            rows = e["row"][live] + layout.base[t]
            tables[table.name] = {
                "keys": e["keys"][live].cpu(),
                "seen": e["seen"][live].cpu(),
                "count": e["count"][live].cpu(),
                **{k: v[rows].detach().cpu() for k, v in tracked.items()},
                **{f"pending_{k}": e[k][~live].cpu() for k in ("keys", "count", "seen")},
            }
        elif layout.count[t] and layout.primary(t):
            base, n = layout.base[t], layout.count[t]
            tables[table.name] = {
                "rows": layout.global_rows(t),
                **{k: v[base : base + n].detach().cpu().clone() for k, v in tracked.items()},
            }
    return tables


# ---- checkpoint streaming (training.checkpoint_shard): blocks of rows, never a copy of a table --------
Source = tuple[tuple[int, ...], torch.dtype, Callable[[int, int], torch.Tensor]]


def static_range(layout: ShardLayout, t: int) -> tuple[int, int, int]:
    """(first, step, count): this rank's rows of static table t, in storage order, are the ids
    first + i * step for i < count."""
    first, step = (layout.rank, layout.world_size) if layout.kinds[t] == "row" else (0, 1)
    return first, step, layout.count[t]


def _whole(x: torch.Tensor) -> Source:
    return tuple(x.shape), x.dtype, lambda s, e: x[s:e]


def checkpoint_sources(
    layout: ShardLayout, storage: RowStorage, dynamic: DynamicTables
) -> dict[str, tuple[dict, dict[str, Source]]]:
    """This rank's part of every table as (description, {tensor: (shape, dtype, fetch)}), where
    fetch(start, stop) gives rows [start, stop) on the device without copying the table: static
    tables (replicated: rank 0 only) are described by their id range (static_range); dynamic ones
    by their live keys ("keys", "seen", "count"; tracked values in that order) and pending keys."""
    out, tracked = {}, storage.tracked()
    for t, table in enumerate(layout.tables):
        if table.dynamic:
            e = dynamic.shards[t].entries_state()
            live = e["row"] >= 0
            rows = e["row"][live] + layout.base[t]
            blocks = {k: _whole(e[k][live]) for k in ("keys", "seen", "count")}
            for k, v in tracked.items():
                shape = (rows.numel(), *v.shape[1:])
                blocks[k] = shape, v.dtype, lambda s, e, v=v, r=rows: v[r[s:e]]
            blocks.update({f"pending_{k}": _whole(e[k][~live]) for k in ("keys", "count", "seen")})
            out[table.name] = ({"kind": "dynamic"}, blocks)
        elif layout.count[t] and layout.primary(t):
            base, n = layout.base[t], layout.count[t]
            blocks = {k: _whole(v[base : base + n]) for k, v in tracked.items()}
            out[table.name] = ({"kind": "static", "rows": list(static_range(layout, t))}, blocks)
    return out


def holds_any(layout: ShardLayout, t: int, rows: list[int]) -> bool:
    """Whether this rank holds any of the ids rows = [first, step, count] of static table t: the ids'
    residues modulo the world size repeat after world_size of them, so that many ids tell."""
    first, step, count = rows
    sample = first + torch.arange(min(count, layout.world_size), dtype=torch.int64) * step
    return bool(layout.holds(t, sample).any())


def load_static_chunk(
    layout: ShardLayout, storage: RowStorage, t: int, rows: list[int], name: str, start: int, chunk
) -> None:
    """Rows start.. of tracked tensor `name` of a static table t's checkpoint block written under the
    id range `rows` (static_range of the writer): the ones this rank holds go into its storage."""
    buf = storage.tracked()[name]
    if tuple(rows) == static_range(layout, t):  # the same rows in the same order: one copy
        first = layout.base[t] + start
        buf[first : first + chunk.shape[0]] = chunk.to(buf.device, buf.dtype)
        return
    ids = rows[0] + (start + torch.arange(chunk.shape[0], dtype=torch.int64)) * rows[1]
    keep = layout.holds(t, ids)
    if bool(keep.any()):
        buf[layout.table_local_rows(t, ids[keep])] = chunk[keep].to(buf.device, buf.dtype)


def dynamic_rows(
    live: torch.Tensor, live_rows: torch.Tensor, keys: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask of `keys` among the sorted live keys of a dynamic table, their storage rows); live and
    live_rows: DynamicTables.live(t)."""
    keys = keys.to(live.device)
    if live.numel() == 0:
        return torch.zeros_like(keys, dtype=torch.bool), live_rows
    pos = torch.searchsorted(live, keys).clamp(max=live.numel() - 1)
    found = live[pos] == keys
    return found, live_rows[pos[found]]


def load_table_state(
    layout: ShardLayout,
    storage: RowStorage,
    dynamic: DynamicTables,
    t: int,
    state: dict[str, torch.Tensor],
    source: str,
    optional=(),
) -> None:
    """Take this rank's part of table t from a state of any world size and plan (shard_tables'
    format, or a full/export state: "keys" of a dynamic table, "rows" of a static one; full state
    dicts index rows by position). Static rows beyond the table are dropped (a warm start into a
    smaller table). Tracked values in `optional` may be missing (then zero for new keys, kept for
    static rows); others are an error naming them."""
    table, tracked = layout.tables[t], storage.tracked()
    missing = [k for k in tracked if k not in state and k not in optional]
    if missing:
        raise KeyError(f"{source}: table {table.name!r} has no {missing}")
    if table.dynamic:
        dynamic.load(t, state)
        return
    rows = state["rows"]
    keep = layout.holds(t, rows)
    local = layout.table_local_rows(t, rows[keep])
    for k, buf in tracked.items():
        if k in state:
            buf[local] = state[k][keep].to(buf.device, buf.dtype)


def export_rows(
    layout: ShardLayout,
    storage: RowStorage,
    dynamic: DynamicTables,
    t: int,
    min_freq: int,
    since_step: int,
) -> tuple[torch.Tensor, ...] | None:
    """This rank's rows of table t to export (CPU): (keys, float32 values, freq, last_step) of rows
    looked up at least max(min_freq, 1) times and updated after since_step; keys are row ids
    (static) or raw keys (dynamic). None where another rank exports them (replicated: rank 0)."""
    device = storage.weight.device
    if layout.tables[t].dynamic:
        keys, rows = dynamic.live(t)
    elif not layout.primary(t):
        return None
    else:
        keys = layout.global_rows(t).to(device)
        rows = torch.arange(layout.count[t], device=device) + layout.base[t]
    keep = (storage.freq[rows] >= max(min_freq, 1)) & (storage.last_step[rows] > since_step)
    rows = rows[keep]
    return (
        keys[keep].cpu(),
        _cpu(storage.weight[rows]),
        storage.freq[rows].cpu(),
        storage.last_step[rows].cpu(),
    )
