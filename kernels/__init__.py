"""Sparse hot-path kernels.

Each public function dispatches by device: CUDA tensors run the Triton kernel, CPU tensors
run the pure-torch reference of the same signature (also the test oracle). Setting
``RECFUSE_FORCE_TRITON=1`` routes CPU tensors to Triton as well, which together with
``TRITON_INTERPRET=1`` is how the Triton code is tested on machines without a GPU.

This package imports nothing else of the project.
"""

from kernels.gather_pool import gather_pool, lookup
from kernels.hash_table import find_or_insert
from kernels.pool_backward import pool_backward
from kernels.pool_backward_update import pool_backward_update
from kernels.sparse_optimizer import SPARSE_OPTIMIZERS, SparseOptimizer, SparseOptimizerName
from kernels.sparse_update import sparse_update
from kernels.unique_partition import unique_partition

__all__ = [
    "SPARSE_OPTIMIZERS",
    "SparseOptimizer",
    "SparseOptimizerName",
    "find_or_insert",
    "gather_pool",
    "lookup",
    "pool_backward",
    "pool_backward_update",
    "sparse_update",
    "unique_partition",
]
