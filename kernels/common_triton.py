"""Helpers shared by the Triton kernels: block-size classes, row alignment, bag argument checks.

Specializations. Sizes that change from batch to batch (rows, bags, keys) are passed with
``do_not_specialize``: Triton otherwise compiles a new variant (about a second, mid-training)
whenever one happens to be 1 or a multiple of 16. What the compiler needs to vectorize row
accesses is passed explicitly instead: ``ALIGN`` (a constexpr, 8 or 1) divides D and every row
stride, and the kernels state it with ``tl.multiple_of`` on row offsets and ``column_mask``.
fp32 and bf16 rows then move as 16-byte vectors (kernels.compile_check counts them in the PTX).
Block widths come from a few classes, so the variants a run can compile are few and all of them
are built by kernels.compile_check.
"""

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

# column-block classes: rows up to 32 wide in one block, wider rows in 128-column blocks
BLOCK_DS = (32, 128)


def column_block(dim: int) -> int:
    """Column block for rows of dim columns: the smallest class that holds the row, else the widest."""
    return next((b for b in BLOCK_DS if b >= dim), BLOCK_DS[-1])


def row_align(*sizes: int) -> int:
    """ALIGN constexpr: 8 when every size (dims, row strides) is a multiple of 8, else 1."""
    return 8 if all(s % 8 == 0 for s in sizes) else 1


@triton.jit
def column_mask(d, dim, ALIGN: tl.constexpr):
    """d < dim, written so the compiler sees it constant over groups of ALIGN columns (dim % ALIGN == 0):
    a mask that may change at every column would split each vector load into scalar loads."""
    return (d // ALIGN) < (dim // ALIGN)


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
