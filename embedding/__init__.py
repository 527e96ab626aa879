"""Embedding tables: resolution, sharding plan, the (sharded) embedding collection."""

from embedding.mixed import MixedDimCollection, make_collection
from embedding.planner import ShardingPlan, TablePlacement, plan_sharding
from embedding.sharded import EmbeddingCollection, ShardedEmbeddingCollection
from embedding.sparse_dist import SparseDist
from embedding.tables import Table, feature_names, resolve_tables
from kernels.sparse_optimizer import SparseOptimizer

__all__ = [
    "EmbeddingCollection",
    "MixedDimCollection",
    "ShardedEmbeddingCollection",
    "ShardingPlan",
    "SparseDist",
    "SparseOptimizer",
    "Table",
    "TablePlacement",
    "feature_names",
    "make_collection",
    "plan_sharding",
    "resolve_tables",
]
