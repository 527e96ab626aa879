"""Sparse hot-path kernels.

Each op is a pair of modules side by side: ``X.py`` holds the public function and its pure-torch
reference of the same signature (also the test oracle), ``X_triton.py`` its Triton kernels and
launcher. The public function runs Triton on CUDA tensors and the reference on CPU tensors;
kernels.dispatch documents the environment variables that change this (the tests set
``RECFUSE_FORCE_TRITON=1`` with ``TRITON_INTERPRET=1`` to run the Triton code on CPU).
The sparse optimizers are defined in kernels.sparse_optimizer, their Triton row math in
kernels.sparse_optimizer_triton; kernels.compile_check builds every kernel for GPU targets.

This package imports nothing else of the project.
"""

from kernels.gather_pool import gather_pool, lookup
from kernels.hash_table import find_or_insert
from kernels.pool_backward import pool_backward
from kernels.pool_backward_update import merge_update, pool_backward_update
from kernels.replicated import append_replicated, scatter_replicated
from kernels.sparse_optimizer import SPARSE_OPTIMIZERS, SparseOptimizer, SparseOptimizerName
from kernels.sparse_update import sparse_update
from kernels.unique_partition import unique_partition

__all__ = [
    "SPARSE_OPTIMIZERS",
    "SparseOptimizer",
    "SparseOptimizerName",
    "append_replicated",
    "find_or_insert",
    "gather_pool",
    "lookup",
    "merge_update",
    "pool_backward",
    "pool_backward_update",
    "scatter_replicated",
    "sparse_update",
    "unique_partition",
]
