"""Triton helpers of the segment kernel (kernels.pool_backward_update_triton): lanes, sums, searches.

Entries (a value, or a gradient row received by an owner) are stably sorted by key, so each key's
entries form a contiguous segment, in entry order. Sorted positions are cut into blocks of CHUNK;
a *piece* is a segment's part inside one block (kernels.pool_backward_update_host_triton lists
them). A program of the first pass has SEGS lanes, one piece each:

- a whole segment (the usual case: it starts and ends inside one block) is summed and finished
  right there (optimizer step or write-out);
- a piece of a segment that crosses a block boundary writes its partial sum to its own slot:
  ``2 * block`` for a block's first piece, ``2 * block + 1`` for its last. Each block has at
  most one of each, so slots never collide and no atomics are needed.

The second pass (FINISH) has one lane per block: the segment that starts in the block and crosses
its end, if any, sums its slots in order (its first piece's, then ``2 * b`` of each later block
b it covers) and is finished. Every sum runs in a fixed order: the bits do not depend on
scheduling. Lanes sum their entries one after another, in entry order, as ``index_add_`` does.
"""

import triton
import triton.language as tl

from kernels.common_triton import INTERPRETED, column_mask

# the interpreter runs programs one after another, each op costing the same at any width: it gets
# more lanes per program (the lane logic is the same at any SEGS)
INTERPRETER_LANES = 16


@triton.jit
def piece_lanes(keys_ptr, pieces_ptr, lane, n, CHUNK: tl.constexpr):
    """First pass: (key, lo, hi, whole, part, slot) of pieces ``lane`` (entries lo .. hi)."""
    in_range = lane < n
    lo = tl.load(pieces_ptr + lane, mask=in_range, other=n)
    hi = tl.load(pieces_ptr + lane + 1, mask=in_range, other=n)
    valid = lo < n  # the piece list is padded with N
    key = tl.load(keys_ptr + lo, mask=valid, other=0)
    prev = tl.load(keys_ptr + lo - 1, mask=valid & (lo > 0), other=0)
    after = tl.load(keys_ptr + hi, mask=valid & (hi < n), other=0)
    starts = valid & ((lo == 0) | (prev != key))
    ends = valid & ((hi == n) | (after != key))
    whole = starts & ends
    part = valid & (whole == 0)
    # a split segment's piece that does not start its block ends it: the block's last piece
    slot = 2 * (lo // CHUNK) + (lo % CHUNK != 0).to(tl.int64)
    return key, lo, hi, starts, ends, whole, part, slot


@triton.jit
def search(keys_ptr, a, b, key, mask, steps, UPPER: tl.constexpr):
    """Per lane, the first position p in [a, b) of the sorted keys with keys[p] > key (UPPER) or
    keys[p] >= key, else b; ``steps`` >= log2(b - a + 1) halvings."""
    for _ in range(steps):
        go = mask & (a < b)
        mid = (a + b) // 2
        v = tl.load(keys_ptr + mid, mask=go, other=0)
        if UPPER:
            right = v <= key
        else:
            right = v < key
        a = tl.where(go & right, mid + 1, a)
        b = tl.where(go & (right == 0), mid, b)
    return a


@triton.jit
def finish_lanes(keys_ptr, lane, n, search_steps, CHUNK: tl.constexpr):
    """Second pass: (key, lo, hi, active, first_slot, slots) of the segment that starts in block
    ``lane`` and crosses its end (active), entries lo .. hi, summed from ``slots`` slots."""
    block = lane * CHUNK
    last = tl.minimum(block + CHUNK, n) - 1
    valid = (block < n) & (last + 1 < n)
    key = tl.load(keys_ptr + last, mask=valid, other=0)
    after = tl.load(keys_ptr + last + 1, mask=valid, other=0)
    before = tl.load(keys_ptr + block - 1, mask=valid & (block > 0), other=0)
    first = tl.load(keys_ptr + block, mask=valid, other=0)
    # crosses the block's end and did not come in from the block before
    active = valid & (after == key) & ((block == 0) | (before != key))
    lo = search(keys_ptr, block, last + 1, key, active, search_steps, False)
    hi = search(keys_ptr, last + 1, tl.zeros_like(lane) + n, key, active, search_steps, True)
    first_slot = 2 * lane + (first != key).to(tl.int64)
    slots = tl.where(active, (hi - 1) // CHUNK - lane + 1, 0)
    return key, lo, hi, active, first_slot, slots


@triton.jit
def lane_count(counts_ptr, has_counts, lo, hi, mask):
    """Lookups of the segments lo .. hi: their entries' counts (a prefix sum), or their length."""
    use = tl.where(has_counts != 0, mask, False)
    end = tl.load(counts_ptr + hi - 1, mask=use, other=0)
    begin = tl.load(counts_ptr + lo - 1, mask=use & (lo > 0), other=0)
    return tl.where(use, end - begin, hi - lo)


@triton.jit
def lane_sum(
    grad_ptr,
    src_ptr,
    scale_ptr,
    scale_stride,
    partial_ptr,
    start,
    first_slot,
    length,
    cols,
    col_mask,
    dim,
    FINISH: tl.constexpr,
    SEGS: tl.constexpr,
    UNROLL: tl.constexpr,
    BLOCK_D: tl.constexpr,
    ALIGN: tl.constexpr,
):
    """Per lane, columns ``cols`` of the sum of ``length`` rows, one after another:
    FINISH: the slots first_slot, 2 * (start + 1), 2 * (start + 2), ... of partial;
    else: sorted entries start, start + 1, ...: scale[r] * gradient row r, r their source row."""
    acc = tl.zeros([SEGS, BLOCK_D], dtype=tl.float32)
    for j0 in range(0, tl.max(length), UNROLL):
        for u in tl.static_range(UNROLL):
            j = j0 + u
            m = j < length
            if FINISH:
                row = tl.where(j == 0, first_slot, 2 * (start + j))
                scale = tl.full([SEGS], 1.0, tl.float32)
                ptr = partial_ptr
            else:
                row = tl.load(src_ptr + start + j, mask=m, other=0)
                scale = tl.load(scale_ptr + row * scale_stride, mask=m, other=0.0)
                ptr = grad_ptr
            base = tl.multiple_of(row * dim, ALIGN)
            x = tl.load(
                ptr + base[:, None] + cols[None, :], mask=m[:, None] & col_mask[None, :], other=0.0
            )
            acc += x * scale[:, None]
    return acc


@triton.jit
def zero_rows(
    out_ptr,
    out_stride,
    lookups_ptr,
    lookups_stride,
    first,
    count,
    dim,
    SEGS: tl.constexpr,
    BLOCK_D: tl.constexpr,
    ALIGN: tl.constexpr,
):
    """Per lane, rows first .. first + count of out and their lookups set to 0."""
    d = tl.arange(0, BLOCK_D)
    zero = tl.zeros([SEGS, BLOCK_D], dtype=out_ptr.dtype.element_ty)
    for r in range(0, tl.max(count)):
        m = r < count
        row = first + r
        tl.store(lookups_ptr + row * lookups_stride, tl.zeros([SEGS], tl.int32), mask=m)
        base = tl.multiple_of(row * out_stride, ALIGN)
        for d0 in range(0, dim, BLOCK_D):
            cols = d0 + d
            mask = m[:, None] & column_mask(cols, dim, ALIGN)[None, :]
            tl.store(out_ptr + base[:, None] + cols[None, :], zero, mask=mask)


def lanes_per_program(block_d: int, num_warps: int) -> int:
    """SEGS: a [SEGS, BLOCK_D] tile holds 4 fp32 columns (one 16-byte vector) per thread."""
    lanes = max(1, 128 * num_warps // block_d)
    return lanes * INTERPRETER_LANES if INTERPRETED else lanes
