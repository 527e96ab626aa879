"""The segment kernel: sorted entries summed per key, then an optimizer step or a write-out.

``segment_pass`` is the kernel's body; kernels.pool_backward_update_triton (optimizer steps) and
kernels.pool_backward_triton (write-out) wrap it with their mode, and
kernels.pool_backward_update_host_triton sorts the entries and launches both passes.

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

from kernels.common_triton import column_mask
from kernels.sparse_optimizer_triton import ADAGRAD, row_factors, update_columns

# dims that reach every column class (common_triton.column_block), 1-aligned and 8-aligned
COMPILE_DIMS = (3, 16, 32, 64, 100, 128)
# sizes that change per call are not value-specialized (kernels/common_triton.py)
SIZES = [
    "grad_features",
    "grad_stride_b",
    "grad_stride_f",
    "has_scale",
    "has_counts",
    "n",
    "dim",
    "search_steps",
    "weight_stride",
    "out_stride",
    "lookups_stride",
    "step",
    "num_unique",
]


@triton.jit
def piece_lanes(keys_ptr, pieces_ptr, lane, n, CHUNK: tl.constexpr):
    """First pass: (key, lo, hi, starts, ends, whole, part, slot) of pieces ``lane`` (entries
    lo .. hi; starts / ends: the piece starts / ends its segment)."""
    in_range = lane < n
    lo = tl.load(pieces_ptr + lane, mask=in_range, other=n).to(tl.int32)
    hi = tl.load(pieces_ptr + lane + 1, mask=in_range, other=n).to(tl.int32)
    valid = lo < n  # the piece list is padded with N
    key = tl.load(keys_ptr + lo, mask=valid, other=0)
    prev = tl.load(keys_ptr + lo - 1, mask=valid & (lo > 0), other=0)
    after = tl.load(keys_ptr + hi, mask=valid & (hi < n), other=0)
    starts = valid & ((lo == 0) | (prev != key))
    ends = valid & ((hi == n) | (after != key))
    whole = starts & ends
    part = valid & (whole == 0)
    # a split segment's piece that does not start its block ends it: the block's last piece
    slot = 2 * (lo // CHUNK) + (lo % CHUNK != 0).to(tl.int32)
    return key, lo, hi, starts, ends, whole, part, slot


@triton.jit
def search(keys_ptr, a, b, key, mask, steps):
    """Per lane, the first position p in [a, b) of the sorted keys with keys[p] > key, else b;
    ``steps`` >= log2(b - a + 1) halvings."""
    for _ in range(steps):
        go = mask & (a < b)
        mid = (a + b) // 2
        v = tl.load(keys_ptr + mid, mask=go, other=0)
        right = v <= key
        a = tl.where(go & right, mid + 1, a)
        b = tl.where(go & (right == 0), mid, b)
    return a


@triton.jit
def finish_lanes(keys_ptr, lane, n, search_steps, CHUNK: tl.constexpr):
    """Second pass: (key, hi, active, first_slot, slots) of the segment that starts in block
    ``lane`` and crosses its end (active), its entries ending at hi, summed from ``slots`` slots."""
    block = lane * CHUNK
    last = tl.minimum(block + CHUNK, n) - 1
    valid = (block < n) & (last + 1 < n)
    key = tl.load(keys_ptr + last, mask=valid, other=0)
    after = tl.load(keys_ptr + last + 1, mask=valid, other=0)
    before = tl.load(keys_ptr + block - 1, mask=valid & (block > 0), other=0)
    first = tl.load(keys_ptr + block, mask=valid, other=0)
    # crosses the block's end and did not come in from the block before
    active = valid & (after == key) & ((block == 0) | (before != key))
    hi = search(keys_ptr, last + 1, tl.zeros_like(lane) + n, key, active, search_steps)
    first_slot = 2 * lane + (first != key).to(tl.int32)
    slots = tl.where(active, (hi - 1) // CHUNK - lane + 1, 0)
    return key, hi, active, first_slot, slots


@triton.jit
def lane_count(
    src_ptr,
    counts_ptr,
    has_counts,
    count_slots_ptr,
    start,
    first_slot,
    length,
    FINISH: tl.constexpr,
):
    """Per lane, the lookups of ``length`` rows (as lane_sum walks them): FINISH, the slots'
    counts; else the entries' counts, or their number (has_counts 0, nothing read)."""
    total = tl.zeros_like(length).to(tl.int64)
    if FINISH:
        for j in range(0, tl.max(length)):
            slot = tl.where(j == 0, first_slot, 2 * (start + j))
            total += tl.load(count_slots_ptr + slot, mask=j < length, other=0)
    else:
        walked = tl.where(has_counts != 0, length, 0)
        total += length - walked
        for j in range(0, tl.max(walked)):
            m = j < walked
            row = tl.load(src_ptr + start + j, mask=m, other=0)
            total += tl.load(counts_ptr + row, mask=m, other=0)
    return total


@triton.jit
def lane_sum(
    grad_ptr,
    grad_features,
    grad_stride_b,
    grad_stride_f,
    src_ptr,
    scale_ptr,
    has_scale,
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
    else: sorted entries start, start + 1, ...: scale[r] * gradient row r, r their source row
    (scale 1 where has_scale is 0), row r at (r // grad_features) * grad_stride_b +
    (r % grad_features) * grad_stride_f of grad."""
    acc = tl.zeros([SEGS, BLOCK_D], dtype=tl.float32)
    for j0 in range(0, tl.max(length), UNROLL):
        for u in tl.static_range(UNROLL):
            j = j0 + u
            m = j < length
            if FINISH:
                row = tl.where(j == 0, first_slot, 2 * (start + j)).to(tl.int64)
                scale = tl.full([SEGS], 1.0, tl.float32)
                ptr = partial_ptr
                base = tl.multiple_of(row * dim, ALIGN)
            else:
                source = tl.load(src_ptr + start + j, mask=m, other=0)
                scaled = tl.where(has_scale != 0, m, False)
                scale = tl.load(scale_ptr + source, mask=scaled, other=1.0)
                ptr = grad_ptr
                # the gradient in place (e.g. a slice of the dense network's concatenation)
                b = (source // grad_features).to(tl.int64)
                f = (source % grad_features).to(tl.int64)
                base = tl.multiple_of(b * grad_stride_b + f * grad_stride_f, ALIGN)
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
    second,
    second_count,
    dim,
    SEGS: tl.constexpr,
    BLOCK_D: tl.constexpr,
    ALIGN: tl.constexpr,
):
    """Per lane, rows first .. first + count, then second .. second + second_count, of out and
    their lookups set to 0 (one loop: one store site)."""
    d = tl.arange(0, BLOCK_D)
    zero = tl.zeros([SEGS, BLOCK_D], dtype=out_ptr.dtype.element_ty)
    total = count + second_count
    for r in range(0, tl.max(total)):
        m = r < total
        row = tl.where(r < count, first + r, second + (r - count))
        tl.store(lookups_ptr + row * lookups_stride, tl.zeros([SEGS], tl.int32), mask=m)
        base = tl.multiple_of(row * out_stride, ALIGN)
        for d0 in range(0, dim, BLOCK_D):
            cols = d0 + d
            mask = m[:, None] & column_mask(cols, dim, ALIGN)[None, :]
            tl.store(out_ptr + base[:, None] + cols[None, :], zero, mask=mask)


@triton.jit
def emit(
    cols,
    acc,
    fin,
    part,
    slot,
    w_base,
    s_base,
    partial_ptr,
    weight_ptr,
    m1_ptr,
    m2_ptr,
    dim,
    out_scale,
    lr,
    eps,
    beta1,
    beta2,
    one_minus_beta1,
    one_minus_beta2,
    denom,
    bias1,
    bias2,
    FINISH: tl.constexpr,
    WRITE_OUT: tl.constexpr,
    OPTIMIZER: tl.constexpr,
    ALIGN: tl.constexpr,
):
    """Columns ``cols`` of the lanes' sums acc: partial pieces to their slots, finished lanes
    (fin) written out or stepped by the optimizer."""
    col_mask = column_mask(cols, dim, ALIGN)[None, :]
    if not FINISH:
        p_base = tl.multiple_of(slot.to(tl.int64) * dim, ALIGN)
        tl.store(partial_ptr + p_base[:, None] + cols[None, :], acc, mask=part[:, None] & col_mask)
    mask = fin[:, None] & col_mask
    if WRITE_OUT:
        out = (acc * out_scale).to(weight_ptr.dtype.element_ty)
        tl.store(weight_ptr + w_base[:, None] + cols[None, :], out, mask=mask)
    else:
        update_columns(
            weight_ptr, w_base[:, None], m1_ptr, m2_ptr, s_base[:, None], cols[None, :], mask, acc,
            OPTIMIZER, lr, eps, beta1, beta2, one_minus_beta1, one_minus_beta2, denom[:, None],
            bias1[:, None], bias2[:, None],
        )  # fmt: skip


@triton.jit
def segment_pass(
    keys_ptr,  # int32/int64 [N] the entries' keys, stably sorted
    pieces_ptr,  # int64 [N+1] first sorted entry of each piece, then N (padding)
    src_ptr,  # int32 [N] source gradient row of each sorted entry
    scale_ptr,  # float32: source row r is scaled by scale_ptr[r] (has_scale)
    has_scale,  # 0: every scale is 1
    counts_ptr,  # int32: source row r holds counts_ptr[r] lookups (has_counts)
    has_counts,  # 0: every entry is one lookup
    grad_ptr,  # float32 source gradient rows, columns contiguous (row r: lane_sum says where)
    grad_features,  # F: source row r = b * F + f
    grad_stride_b,  # elements between grad's b and b + 1 (divisible by ALIGN)
    grad_stride_f,  # elements between grad's f and f + 1 (divisible by ALIGN)
    n,  # N, entries
    dim,  # D
    partial_ptr,  # float32 [2 * cdiv(N, CHUNK), D] slots: partial sums of split segments
    count_slots_ptr,  # int64 slots: their lookups [2 * cdiv(N, CHUNK)], then first-pass counts
    search_steps,  # FINISH: binary-search halvings over N entries (N.bit_length())
    done_ptr,  # int64 out: rows updated by each program (not WRITE_OUT; host.run_segments)
    weight_ptr,  # [R, D] storage (fp32/bf16/fp16), updated in place; WRITE_OUT: out [U, D]
    weight_stride,  # elements between rows of weight_ptr
    m1_ptr,  # adagrad: float32 [R]; adam: float32 [R, D]
    m2_ptr,  # adam: float32 [R, D]
    steps_ptr,  # adam: int64 [R]
    freq_ptr,  # int64 [R] += each row's lookups; WRITE_OUT: int32 lookups [U] = them
    freq_stride,  # elements between entries of freq_ptr (0: a scratch word)
    last_step_ptr,  # int64 [R] = step for every updated row (not WRITE_OUT)
    step,  # this update's step number
    lr,  # learning rate
    eps,  # denominator epsilon
    beta1,  # adam first-moment decay
    beta2,  # adam second-moment decay
    one_minus_beta1,  # 1 - beta1, rounded once on the host in float64
    one_minus_beta2,  # 1 - beta2, same
    log2_beta1,  # log2(beta1): beta1^t = exp2(t * log2_beta1)
    log2_beta2,  # log2(beta2), same
    out_scale,  # WRITE_OUT: multiplies every sum written
    num_keys,  # WRITE_OUT: U; rows of out that no entry maps to are zeroed
    FINISH: tl.constexpr,  # second pass: one lane per block, long segments from their slots
    WRITE_OUT: tl.constexpr,  # write sums to out instead of an optimizer step
    OPTIMIZER: tl.constexpr,  # SGD, ADAGRAD or ADAM of sparse_optimizer_triton (not WRITE_OUT)
    CHUNK: tl.constexpr,  # sorted entries per block
    SEGS: tl.constexpr,  # lanes per program
    UNROLL: tl.constexpr,  # rows a lane loads per step
    BLOCK_D: tl.constexpr,  # columns per step (one of common_triton.BLOCK_DS)
    ALIGN: tl.constexpr,  # divides D and weight_stride (row_align)
):
    """One pass of the segment kernel (the module docstring); the kernels of
    pool_backward_update_triton and pool_backward_triton are this with their mode."""
    pid = tl.program_id(0)
    # positions are int32 (N < 2^31, checked by the launchers): fewer registers
    lane = pid * SEGS + tl.arange(0, SEGS)
    if FINISH:
        key, hi, fin, slot, length = finish_lanes(keys_ptr, lane, n, search_steps, CHUNK)
        start, part = lane, lane < 0
    else:
        key, lo, hi, starts, ends, fin, part, slot = piece_lanes(
            keys_ptr, pieces_ptr, lane, n, CHUNK
        )
        start, length = lo, tl.where(fin | part, hi - lo, 0)
    count = lane_count(
        src_ptr, counts_ptr, has_counts, count_slots_ptr, start, slot, length, FINISH
    )
    if not WRITE_OUT:
        fin = fin & (count > 0)  # a row nobody looked up is not touched (lazy optimizers)
        length = tl.where(fin | part, length, 0)
    row = key.to(tl.int64)
    # the per-row bookkeeping first: its values are dead before the sums (fewer registers)
    if not FINISH:
        tl.store(count_slots_ptr + slot, count, mask=part)
    if WRITE_OUT:
        tl.store(freq_ptr + row * freq_stride, count.to(tl.int32), mask=fin)
        if not FINISH:
            # rows no entry maps to: before each segment (after the previous key), after the last
            prev = tl.load(keys_ptr + lo - 1, mask=starts & (lo > 0), other=-1).to(tl.int64)
            zero_rows(
                weight_ptr, weight_stride, freq_ptr, freq_stride,
                prev + 1, tl.where(starts, row - prev - 1, 0),
                row + 1, tl.where(ends & (hi == n), num_keys - row - 1, 0),
                dim, SEGS, BLOCK_D, ALIGN,
            )  # fmt: skip
    else:
        freq = tl.load(freq_ptr + row * freq_stride, mask=fin, other=0)
        tl.store(freq_ptr + row * freq_stride, freq + count, mask=fin)
        tl.store(last_step_ptr + row, tl.zeros_like(row) + step, mask=fin)
        updated = tl.sum(fin.to(tl.int64))
        if FINISH:
            # the first pass's counts (after the slots): at most CHUNK of its programs per
            # program here, added in, so the counts the caller keeps are few
            first = pid * CHUNK + tl.arange(0, CHUNK)
            counted = first < tl.cdiv(n, SEGS)
            first_done = count_slots_ptr + 2 * tl.cdiv(n, CHUNK) + first
            updated += tl.sum(tl.load(first_done, mask=counted, other=0))
        tl.store(done_ptr + pid, updated)
    w_base = tl.multiple_of(row * weight_stride, ALIGN)
    s_base = tl.multiple_of(row * dim, ALIGN)
    d = tl.arange(0, BLOCK_D)
    acc = lane_sum(
        grad_ptr, grad_features, grad_stride_b, grad_stride_f, src_ptr, scale_ptr, has_scale,
        partial_ptr, start, slot, length, d, column_mask(d, dim, ALIGN), dim, FINISH, SEGS,
        UNROLL, BLOCK_D, ALIGN,
    )  # fmt: skip
    denom = tl.sum(acc * acc, axis=1)
    bias1, bias2 = denom, denom
    if not WRITE_OUT:
        # row-wise Adagrad needs the whole row's mean(g^2) before any column moves
        if OPTIMIZER == ADAGRAD:
            for d0 in range(BLOCK_D, dim, BLOCK_D):
                more = lane_sum(
                    grad_ptr, grad_features, grad_stride_b, grad_stride_f, src_ptr, scale_ptr,
                    has_scale, partial_ptr, start, slot, length, d0 + d,
                    column_mask(d0 + d, dim, ALIGN), dim, FINISH, SEGS, UNROLL, BLOCK_D, ALIGN,
                )  # fmt: skip
                denom += tl.sum(more * more, axis=1)
        denom, bias1, bias2 = row_factors(
            row, denom, dim, m1_ptr, steps_ptr, OPTIMIZER, eps, log2_beta1, log2_beta2, fin
        )
    emit(
        d, acc, fin, part, slot, w_base, s_base, partial_ptr, weight_ptr, m1_ptr, m2_ptr, dim,
        out_scale, lr, eps, beta1, beta2, one_minus_beta1, one_minus_beta2, denom, bias1, bias2,
        FINISH, WRITE_OUT, OPTIMIZER, ALIGN,
    )  # fmt: skip
    for d0 in range(BLOCK_D, dim, BLOCK_D):
        acc = lane_sum(
            grad_ptr, grad_features, grad_stride_b, grad_stride_f, src_ptr, scale_ptr, has_scale,
            partial_ptr, start, slot, length, d0 + d, column_mask(d0 + d, dim, ALIGN), dim, FINISH,
            SEGS, UNROLL, BLOCK_D, ALIGN,
        )  # fmt: skip
        emit(
            d0 + d, acc, fin, part, slot, w_base, s_base, partial_ptr, weight_ptr, m1_ptr, m2_ptr,
            dim, out_scale, lr, eps, beta1, beta2, one_minus_beta1, one_minus_beta2, denom, bias1,
            bias2, FINISH, WRITE_OUT, OPTIMIZER, ALIGN,
        )  # fmt: skip
