"""Embedding tables: resolution, sharding plan, the (sharded) embedding collection."""

from embedding.planner import ShardingPlan, TablePlacement, plan_sharding
from embedding.sharded import EmbeddingCollection, ShardedEmbeddingCollection, SparseOptimizerConfig
from embedding.sparse_dist import SparseDist
from embedding.tables import Table, feature_names, resolve_tables

__all__ = [
    "EmbeddingCollection",
    "ShardedEmbeddingCollection",
    "ShardingPlan",
    "SparseDist",
    "SparseOptimizerConfig",
    "Table",
    "TablePlacement",
    "feature_names",
    "plan_sharding",
    "resolve_tables",
]
