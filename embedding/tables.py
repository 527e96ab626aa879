"""Resolved embedding tables: config rows scaled, features mapped to tables, fused row offsets."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels.sparse_optimizer import SparseOptimizer

STORAGE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class DynamicSpec:
    """How a dynamic table (keys: any non-negative int64) allocates, admits and evicts rows (config.TableConfig)."""

    capacity: int  # initial rows of the whole table
    max_capacity: int = 0  # growth limit of the whole table, 0 = none
    load_factor: float = 0.5  # hash index: largest fraction of slots in use before a rehash
    admit_min_freq: int = 1  # lookups before a key gets a row
    evict_after_steps: int = 0  # keys not seen for this many steps are forgotten; 0 = never
    # at capacity evict the least recently seen key of the key shard (else grow)
    evict_when_full: bool = False
    key_shards: int = 64  # owner rank = splitmix64(key ^ table salt) % key_shards % W


@dataclass(frozen=True)
class Table:
    name: str
    num_embeddings: int  # rows after scaling
    dim: int
    pooling: str  # "sum" or "mean"
    features: tuple[str, ...]
    placement: str = "auto"  # requested placement: auto, table, row, replicated
    lookups_per_sample: float = 1.0  # expected ids per sample over all its features (planner)
    out_of_range: str = "error"  # ids >= num_embeddings: "error" or "modulo" (id % num_embeddings)
    # set: keys are raw int64 ids, rows allocated on admission (embedding.dynamic)
    dynamic: DynamicSpec | None = None


def resolve_tables(emb_cfg, bag_lengths: dict[str, float] | None = None) -> list[Table]:
    """Tables from a config.EmbeddingConfig, rows multiplied by row_scale (at least 1 row)."""
    tables = []
    for t in emb_cfg.tables:
        features = tuple(t.features) or (t.name,)
        lookups = sum((bag_lengths or {}).get(f, 1.0) for f in features)
        rows = max(1, int(round(t.num_embeddings * emb_cfg.row_scale)))
        policy = t.out_of_range or getattr(emb_cfg, "out_of_range", "error")
        dynamic = None
        if getattr(t, "dynamic", False):
            dynamic = DynamicSpec(
                t.capacity,
                t.max_capacity,
                t.load_factor,
                t.admit_min_freq,
                t.evict_after_steps,
                t.evict_when_full,
                t.key_shards,
            )
        tables.append(
            Table(
                t.name,
                rows,
                getattr(t, "dim", 0) or emb_cfg.dim,  # 0: the collection's default dim
                t.pooling,
                features,
                t.placement,
                lookups,
                policy,
                dynamic,
            )
        )
    seen: dict[str, str] = {}
    for t in tables:
        for f in t.features:
            if f in seen:
                raise ValueError(
                    f"feature {f!r} is mapped to both table {seen[f]!r} and table {t.name!r}"
                )
            seen[f] = t.name
    return tables


def feature_names(tables: list[Table]) -> list[str]:
    """Feature order of the pooled output [B, F, D]: tables in order, each table's features in order."""
    return [f for t in tables for f in t.features]


def one_dim(tables: list[Table]) -> int:
    """The dim of tables that share one (a ShardedEmbeddingCollection's)."""
    dims = {t.dim for t in tables}
    if len(dims) != 1:
        raise ValueError(
            f"a ShardedEmbeddingCollection holds tables of one dim, got {sorted(dims)}: "
            "embedding.mixed.make_collection groups them by dim"
        )
    return dims.pop()


def pooled_shape(feature_dims: list[int], batch_size: int) -> tuple[int, ...]:
    """The shape of a collection's pooled output: [B, F, D] when every feature has dim D, else
    [B, sum of the features' dims] (embedding.mixed)."""
    if len(set(feature_dims)) == 1:
        return (batch_size, len(feature_dims), feature_dims[0])
    return (batch_size, sum(feature_dims))


def row_bytes(dim: int, storage_dtype: str, optimizer: str) -> int:
    """Bytes one row costs: its weights plus its sparse optimizer state."""
    weight = dim * torch.empty(0, dtype=STORAGE_DTYPES[storage_dtype]).element_size()
    state = sum(
        v.element_size() * max(v[0].numel(), 1)
        for v in SparseOptimizer(optimizer).init_state(1, dim, "cpu").values()
    )
    return weight + state


# a dynamic table's hash index per slot: key, row, lookup count, last step seen (int64 each); per row: a free-list entry
INDEX_SLOT_BYTES = 32
FREE_LIST_BYTES = 8


def dynamic_bytes(table: Table, storage_dtype: str, optimizer: str) -> int:
    """Bytes a dynamic table's initial capacity costs over all ranks: rows and their state, the hash index at its
    load factor (pending keys, not yet admitted, take index slots only) and the free list."""
    spec = table.dynamic
    per_row = row_bytes(table.dim, storage_dtype, optimizer) + FREE_LIST_BYTES
    return int(spec.capacity * (per_row + INDEX_SLOT_BYTES / spec.load_factor))
