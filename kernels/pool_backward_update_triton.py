"""Triton segment kernel: sorted entries summed per key, then an optimizer step or a write-out.

One kernel serves three calls (host side: kernels.pool_backward_update_host_triton):

- pool_backward_update (W = 1): entries are the batch's values, keyed by storage row; each row's
  gradient (the sum of its values' bag gradients) gets one optimizer step right there, with
  freq += its lookups and last_step = step.
- merge_update (the owner at W > 1): entries are the gradient rows received from every rank,
  keyed by storage row; the same update. A row whose lookups sum to 0 is not touched.
- pool_backward (the requester at W > 1, ``WRITE_OUT``): entries keyed by unique index; each
  sum (times a scale) is written to out[u] in out's dtype, its lookups to lookups[u].

Two passes (kernels.segments_triton): the first sums every segment that fits in a block of CHUNK
sorted entries and finishes it; pieces of longer segments (hot rows) write their partial sums to
their own slots; the second (``FINISH``) sums each long segment's slots in order and finishes it.
No atomics: the bits do not depend on scheduling. No host sync: grids are sized from N, and the
number of rows updated comes back as a device tensor. The optimizer is a constexpr (its row math:
kernels.sparse_optimizer_triton), so each variant holds one optimizer's code only.
"""

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from kernels.common_triton import column_block, column_mask, row_align
from kernels.pool_backward_update_host_triton import (
    Entries,
    bag_entries,
    check_pooled,
    check_rows,
    check_storage,
    optimizer_state,
    row_entries,
)
from kernels.segments_triton import (
    finish_lanes,
    lane_count,
    lane_sum,
    lanes_per_program,
    piece_lanes,
    zero_rows,
)
from kernels.sparse_optimizer import SPARSE_OPTIMIZERS, SparseOptimizer
from kernels.sparse_optimizer_triton import (
    ADAGRAD,
    OPTIMIZER_IDS,
    kernel_args,
    row_factors,
    update_columns,
)

CHUNK = 128  # sorted entries per block: a longer segment is split and finished by the second pass
UNROLL = 4  # entries a lane loads per step (independent loads in flight)
NUM_WARPS = 1  # a [SEGS, BLOCK_D] tile of 128 fp32 per warp (lanes_per_program)
_SIZES = [
    "scale_stride",
    "has_counts",
    "n",
    "dim",
    "weight_stride",
    "freq_stride",
    "step",
    "num_keys",
    "search_steps",
]


@triton.jit
def _emit(
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
        p_base = tl.multiple_of(slot * dim, ALIGN)
        tl.store(partial_ptr + p_base[:, None] + cols[None, :], acc, mask=part[:, None] & col_mask)
    mask = fin[:, None] & col_mask
    if WRITE_OUT:
        out = (acc * out_scale).to(weight_ptr.dtype.element_ty)
        tl.store(weight_ptr + w_base[:, None] + cols[None, :], out, mask=mask)
    else:
        update_columns(
            weight_ptr,
            w_base[:, None],
            m1_ptr,
            m2_ptr,
            s_base[:, None],
            cols[None, :],
            mask,
            acc,
            OPTIMIZER,
            lr,
            eps,
            beta1,
            beta2,
            one_minus_beta1,
            one_minus_beta2,
            denom[:, None],
            bias1[:, None],
            bias2[:, None],
        )


@triton.jit(do_not_specialize=_SIZES, do_not_specialize_on_alignment=["scale_ptr", "freq_ptr"])
def _segment_kernel(
    keys_ptr,  # int32/int64 [N] the entries' keys, stably sorted
    pieces_ptr,  # int64 [N+1] first sorted entry of each piece, then N (padding)
    src_ptr,  # int64 [N] source gradient row of each sorted entry
    scale_ptr,  # float32: source row r is scaled by scale_ptr[r * scale_stride]
    scale_stride,  # 1, or 0 (scale_ptr[0] = 1 for every entry)
    counts_ptr,  # int64 [N] inclusive prefix sum of the sorted entries' lookups (has_counts)
    has_counts,  # 0: a segment's lookups are its number of entries
    grad_ptr,  # float32 [*, D] source gradient rows, contiguous
    n,  # N, entries
    dim,  # D
    partial_ptr,  # float32 [2 * cdiv(N, CHUNK), D] slots: partial sums of split segments
    done_ptr,  # int32 [programs] out: rows updated by each program (not WRITE_OUT)
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
    search_steps,  # FINISH: binary-search halvings over N entries (N.bit_length())
    FINISH: tl.constexpr,  # second pass: one lane per block, long segments from their slots
    WRITE_OUT: tl.constexpr,  # write sums to out instead of an optimizer step
    OPTIMIZER: tl.constexpr,  # SGD, ADAGRAD or ADAM of sparse_optimizer_triton (not WRITE_OUT)
    CHUNK: tl.constexpr,  # sorted entries per block
    SEGS: tl.constexpr,  # lanes per program
    UNROLL: tl.constexpr,  # rows a lane loads per step
    BLOCK_D: tl.constexpr,  # columns per step (one of common_triton.BLOCK_DS)
    ALIGN: tl.constexpr,  # divides D and weight_stride (row_align)
):
    pid = tl.program_id(0)
    lane = pid.to(tl.int64) * SEGS + tl.arange(0, SEGS)
    if FINISH:
        key, lo, hi, fin, slot, length = finish_lanes(keys_ptr, lane, n, search_steps, CHUNK)
        start, part = lane, lane < 0
    else:
        key, lo, hi, starts, ends, fin, part, slot = piece_lanes(
            keys_ptr, pieces_ptr, lane, n, CHUNK
        )
        start, length = lo, hi - lo
    count = lane_count(counts_ptr, has_counts, lo, hi, fin)
    if not WRITE_OUT:
        fin = fin & (count > 0)  # a row nobody looked up is not touched (lazy optimizers)
    length = tl.where(fin | part, length, 0)
    row = key.to(tl.int64)
    w_base = tl.multiple_of(row * weight_stride, ALIGN)
    s_base = tl.multiple_of(row * dim, ALIGN)
    d = tl.arange(0, BLOCK_D)
    acc = lane_sum(
        grad_ptr, src_ptr, scale_ptr, scale_stride, partial_ptr, start, slot, length,
        d, column_mask(d, dim, ALIGN), dim, FINISH, SEGS, UNROLL, BLOCK_D, ALIGN,
    )  # fmt: skip
    denom = tl.sum(acc * acc, axis=1)
    bias1, bias2 = denom, denom
    if not WRITE_OUT:
        # row-wise Adagrad needs the whole row's mean(g^2) before any column moves
        if OPTIMIZER == ADAGRAD:
            for d0 in range(BLOCK_D, dim, BLOCK_D):
                more = lane_sum(
                    grad_ptr, src_ptr, scale_ptr, scale_stride, partial_ptr, start, slot, length,
                    d0 + d, column_mask(d0 + d, dim, ALIGN), dim, FINISH, SEGS, UNROLL, BLOCK_D,
                    ALIGN,
                )  # fmt: skip
                denom += tl.sum(more * more, axis=1)
        denom, bias1, bias2 = row_factors(
            row, denom, dim, m1_ptr, steps_ptr, OPTIMIZER, eps, log2_beta1, log2_beta2, fin
        )
    _emit(
        d, acc, fin, part, slot, w_base, s_base, partial_ptr, weight_ptr, m1_ptr, m2_ptr, dim,
        out_scale, lr, eps, beta1, beta2, one_minus_beta1, one_minus_beta2, denom, bias1, bias2,
        FINISH, WRITE_OUT, OPTIMIZER, ALIGN,
    )  # fmt: skip
    for d0 in range(BLOCK_D, dim, BLOCK_D):
        acc = lane_sum(
            grad_ptr, src_ptr, scale_ptr, scale_stride, partial_ptr, start, slot, length,
            d0 + d, column_mask(d0 + d, dim, ALIGN), dim, FINISH, SEGS, UNROLL, BLOCK_D, ALIGN,
        )  # fmt: skip
        _emit(
            d0 + d, acc, fin, part, slot, w_base, s_base, partial_ptr, weight_ptr, m1_ptr, m2_ptr,
            dim, out_scale, lr, eps, beta1, beta2, one_minus_beta1, one_minus_beta2, denom, bias1,
            bias2, FINISH, WRITE_OUT, OPTIMIZER, ALIGN,
        )  # fmt: skip
    if WRITE_OUT:
        tl.store(freq_ptr + row * freq_stride, count.to(tl.int32), mask=fin)
        if not FINISH:
            # rows no entry maps to: before each segment (after the previous key), after the last
            prev = tl.load(keys_ptr + lo - 1, mask=starts & (lo > 0), other=-1).to(tl.int64)
            zero_rows(
                weight_ptr, weight_stride, freq_ptr, freq_stride, prev + 1,
                tl.where(starts, row - prev - 1, 0), dim, SEGS, BLOCK_D, ALIGN,
            )  # fmt: skip
            zero_rows(
                weight_ptr, weight_stride, freq_ptr, freq_stride, row + 1,
                tl.where(ends & (hi == n), num_keys - row - 1, 0), dim, SEGS, BLOCK_D, ALIGN,
            )  # fmt: skip
    else:
        freq = tl.load(freq_ptr + row * freq_stride, mask=fin, other=0)
        tl.store(freq_ptr + row * freq_stride, freq + count, mask=fin)
        tl.store(last_step_ptr + row, tl.zeros_like(row) + step, mask=fin)
        tl.store(done_ptr + pid, tl.sum(fin.to(tl.int32)))


class Target(NamedTuple):
    """What the kernel writes, in its argument order (weight_ptr .. step)."""

    weight: torch.Tensor  # storage [R, D], or out [U, D] (WRITE_OUT)
    weight_stride: int
    m1: torch.Tensor
    m2: torch.Tensor
    steps: torch.Tensor
    freq: torch.Tensor  # int64 [R], or int32 lookups (WRITE_OUT)
    freq_stride: int
    last_step: torch.Tensor
    step: int


def run_segments(
    entries: Entries, chunk: int, grad, target: Target, hyper, optimizer: int, write_out: bool
):
    """Both passes over entries sorted in blocks of chunk; -> int64 0-dim: rows updated (not
    write_out). hyper: kernel_args(optimizer)[1:] then (out_scale, num_keys)."""
    n, dim = entries.keys.numel(), grad.shape[1]
    block_d = column_block(dim)
    segs = lanes_per_program(block_d, NUM_WARPS)
    blocks = triton.cdiv(n, chunk)
    partial = torch.empty(2 * blocks, dim, dtype=torch.float32, device=grad.device)
    first = triton.cdiv(n, segs)
    # with one block no segment crosses a block boundary
    second = triton.cdiv(blocks, segs) if blocks > 1 else 0
    done = torch.empty(first + second, dtype=torch.int32, device=grad.device)
    for finish, programs, done_part in ((False, first, done[:first]), (True, second, done[first:])):
        if programs == 0:
            continue
        _segment_kernel[(programs,)](
            *entries, grad, n, dim, partial, done_part, *target, *hyper, n.bit_length(),
            FINISH=finish, WRITE_OUT=write_out, OPTIMIZER=optimizer, CHUNK=chunk, SEGS=segs,
            UNROLL=UNROLL, BLOCK_D=block_d, ALIGN=row_align(dim, target.weight_stride),
            num_warps=NUM_WARPS,
        )  # fmt: skip
    return None if write_out else done.sum()


def _storage_target(weight, state, freq, last_step, step) -> Target:
    return Target(
        weight, weight.stride(0), *optimizer_state(state, weight.device), freq, 1, last_step, step
    )


def _run_update(entries, chunk, grad, weight, state, freq, last_step, step, optimizer):
    target = _storage_target(weight, state, freq, last_step, step)
    hyper = (*kernel_args(optimizer)[1:], 1.0, 0)
    return run_segments(entries, chunk, grad, target, hyper, OPTIMIZER_IDS[optimizer.name], False)


def pool_backward_update_triton(
    weight,
    state,
    freq,
    last_step,
    step,
    value_rows,
    offsets,
    grad_pooled,
    feature_mean,
    optimizer: SparseOptimizer,
) -> torch.Tensor:
    """Same contract as kernels.pool_backward_update.pool_backward_update (in place)."""
    check_storage(weight, state, freq, last_step, optimizer)
    dim = weight.shape[1]
    mean = check_pooled(grad_pooled, value_rows, offsets, feature_mean, dim, weight.device)
    if value_rows.numel() == 0 or dim == 0:
        return torch.zeros((), dtype=torch.int64, device=weight.device)
    batch_size = grad_pooled.shape[0]
    chunk = CHUNK
    entries = bag_entries(value_rows, weight.shape[0], offsets, batch_size, mean, chunk)
    grad = grad_pooled.float().contiguous().view(-1, dim)
    return _run_update(entries, chunk, grad, weight, state, freq, last_step, step, optimizer)


def merge_update_triton(
    weight,
    state,
    freq,
    last_step,
    step,
    rows,
    grads,
    counts,
    optimizer: SparseOptimizer,
    scale=None,
) -> torch.Tensor:
    """Same contract as kernels.pool_backward_update.merge_update (in place)."""
    check_storage(weight, state, freq, last_step, optimizer)
    check_rows(weight, rows, grads, counts, scale)
    if rows.numel() == 0 or weight.shape[1] == 0:
        return torch.zeros((), dtype=torch.int64, device=weight.device)
    chunk = CHUNK
    entries = row_entries(rows, weight.shape[0], counts, scale, chunk)
    grads = grads.contiguous()
    return _run_update(entries, chunk, grads, weight, state, freq, last_step, step, optimizer)


# every column class of the launchers, 1-aligned and 8-aligned
COMPILE_DIMS = (3, 16, 32, 64, 100, 128)


def compile_cases():
    """Calls covering every specialization these launchers make (kernels.compile_check compiles
    them): each optimizer x storage dtype x column class, both passes (N > CHUNK)."""
    n = 2 * CHUNK + 5
    offsets = torch.tensor([0, n - 7, n - 7, n - 2, n], dtype=torch.int64)  # F=2, B=2, empty bag
    value_rows = torch.arange(n, dtype=torch.int64) % 5
    for name in SPARSE_OPTIMIZERS:
        o = SparseOptimizer(name, 0.1)
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            for dim in COMPILE_DIMS:

                def case(o=o, t=dtype, d=dim):
                    weight = torch.zeros(8, d, dtype=t)
                    state = o.init_state(8, d, "cpu")
                    counters = [torch.zeros(8, dtype=torch.int64) for _ in range(2)]
                    grad = torch.zeros(2, 2, d)
                    mean = torch.tensor([True, False])
                    pool_backward_update_triton(
                        weight, state, *counters, 1, value_rows, offsets, grad, mean, o
                    )
                    merge_update_triton(
                        weight, state, *counters, 1, value_rows, torch.zeros(n, d),
                        torch.ones(n, dtype=torch.int32), o, torch.ones(n),
                    )  # fmt: skip

                yield case
