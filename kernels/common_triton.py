"""Helpers shared by the Triton kernels: block-size classes, row alignment, bag argument checks.

Specializations. Sizes that change from batch to batch (rows, bags, keys) are passed with
``do_not_specialize``: Triton otherwise compiles a new variant (about a second, mid-training)
whenever one happens to be 1 or a multiple of 16. What the compiler needs to vectorize row
accesses is passed explicitly instead: ``ALIGN`` (a constexpr, 8 or 1) divides D and every row
stride, and the kernels state it with ``tl.multiple_of`` on row offsets and ``column_mask``.
fp32 and bf16 rows then move as 16-byte vectors (kernels.compile_check counts them in the PTX).
Block widths come from a few classes, so the variants a run can compile are few and all of them
are built by kernels.compile_check.

Tiles. A kernel's [rows, BLOCK_D] tile is sized by ``tile_rows`` so that each thread holds a fixed
number of values per operand whatever BLOCK_D is, and a thread's registers do not grow with the
tile: at least one 16-byte vector (``vector_values``: 4 fp32 columns, 8 bf16/fp16 columns), 8 by
default (two fp32 vectors, one bf16 vector). The bound every specialization is held to
(tests/kernels/test_kernels_compile.py): no spills, at most MAX_REGISTERS registers a thread.
"""

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

# column-block classes: a row of up to 128 columns in one block of the smallest class that holds it
# (D = 16 and D = 64 fill their block), wider rows in 128-column blocks
BLOCK_DS = (16, 32, 64, 128)
NUM_WARPS = 4  # warps per program of the row kernels, unless a kernel says otherwise
VALUES_PER_THREAD = 8  # per operand: two 16-byte vectors of fp32, one of bf16/fp16
MAX_REGISTERS = 128  # per thread, every specialization (the compile test checks it)


def column_block(dim: int) -> int:
    """Column block for rows of dim columns: the smallest class that holds the row, else the widest."""
    return next((b for b in BLOCK_DS if b >= dim), BLOCK_DS[-1])


def tile_rows(
    block_d: int, values_per_thread: int = VALUES_PER_THREAD, num_warps: int = NUM_WARPS
) -> int:
    """Rows of a [rows, block_d] tile that gives each of the num_warps * 32 threads values_per_thread
    values (a power of two: every BLOCK_DS class divides 32 * 8)."""
    return max(1, values_per_thread * 32 * num_warps // block_d)


def compile_dims() -> tuple[int, ...]:
    """Dims reaching every (BLOCK_D, ALIGN) class of column_block and row_align: for each block
    width, one dim that fills it (a multiple of 8) and one unaligned dim above the previous class."""
    aligned = BLOCK_DS
    unaligned = tuple(b - 3 for b in BLOCK_DS)
    return tuple(sorted(aligned + unaligned))


def vector_values(dtype: torch.dtype) -> int:
    """Values of dtype in one 16-byte vector: 4 fp32, 8 bf16/fp16."""
    return 16 // dtype.itemsize


def row_align(*sizes: int) -> int:
    """ALIGN constexpr: 8 when every size (dims, row strides) is a multiple of 8, else 1."""
    return 8 if all(s % 8 == 0 for s in sizes) else 1


@triton.jit
def column_mask(d, dim, ALIGN: tl.constexpr):
    """d < dim, written so the compiler sees it constant over groups of ALIGN columns (dim % ALIGN == 0):
    a mask that may change at every column would split each vector load into scalar loads."""
    return (d // ALIGN) < (dim // ALIGN)


@triton.jit(do_not_specialize=["num_blocks", "num_columns"])
def column_scan_kernel(
    counts_ptr,  # int32 [blocks, C] in: a count per block and column; out: exclusive prefix sums
    num_blocks,  # blocks
    num_columns,  # C: one program per column
    totals_ptr,  # int64 [C] out: each column's total
    SCAN: tl.constexpr,  # blocks per step
):
    """Exclusive prefix sums down each column of counts, in place (no atomics: deterministic)."""
    c = tl.program_id(0)
    total = tl.zeros((), tl.int32)
    for start in range(0, num_blocks, SCAN):
        b = start + tl.arange(0, SCAN)
        m = b < num_blocks
        x = tl.load(counts_ptr + b * num_columns + c, mask=m, other=0)
        tl.store(counts_ptr + b * num_columns + c, total + tl.cumsum(x, axis=0) - x, mask=m)
        total += tl.sum(x, axis=0)
    tl.store(totals_ptr + c, total.to(tl.int64))


# whether this process's kernels run in the Triton interpreter (TRITON_INTERPRET=1 at their import)
INTERPRETED = isinstance(column_mask, InterpretedFunction)


def check_bags(inverse, offsets, batch_size, feature_mean, device):
    """Shared argument checks of gather_pool / pool_backward; returns feature_mean as int32."""
    if inverse.dim() != 1 or inverse.dtype != torch.int64:
        raise ValueError(f"inverse must be 1-D int64, got {inverse.dtype} {tuple(inverse.shape)}")
    if offsets.dim() != 1 or offsets.dtype != torch.int64:
        raise ValueError(f"offsets must be 1-D int64, got {offsets.dtype} {tuple(offsets.shape)}")
    num_features = feature_mean.numel()
    if offsets.numel() != num_features * batch_size + 1:
        raise ValueError(
            f"offsets has {offsets.numel()} entries, expected F*B+1 = {num_features * batch_size + 1}"
        )
    for name, t in (("inverse", inverse), ("offsets", offsets), ("feature_mean", feature_mean)):
        if t.device != device:
            raise ValueError(f"{name} on {t.device}, expected {device}")
    return feature_mean.to(torch.int32).contiguous()
