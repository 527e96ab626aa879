"""Triton sparse optimizer fused with segment sums: pool_backward_update (W = 1) and merge_update.

The segment kernel (kernels.segments_triton; host side: kernels.pool_backward_update_host_triton)
serves three calls; this module holds its optimizer mode, ``_segment_update_kernel``:

- pool_backward_update (W = 1): entries are the batch's values, keyed by storage row; each row's
  gradient (the sum of its values' bag gradients) gets one optimizer step right there, with
  freq += its lookups and last_step = step.
- merge_update (the owner at W > 1): entries are the gradient rows received from every rank,
  keyed by storage row; the same update. A row whose lookups sum to 0 is not touched.
- pool_backward (the requester at W > 1; kernels.pool_backward_triton): the write-out mode.

Two passes: the first sums every segment that fits in a block of CHUNK sorted entries and
finishes it; pieces of longer segments (hot rows) write their partial sums to their own slots;
the second (``FINISH``) sums each long segment's slots in order and finishes it. No atomics: the
bits do not depend on scheduling. No host sync: grids are sized from N, and the number of rows
updated comes back as a device tensor of counts (summed when read). The optimizer is a constexpr (its row math:
kernels.sparse_optimizer_triton), so each variant holds one optimizer's code only.
"""

import torch
import triton
import triton.language as tl

import kernels.pool_backward_update_host_triton as host
from kernels.common_triton import row_align
from kernels.pool_backward_update_host_triton import (
    bag_entries,
    check_pooled,
    check_rows,
    check_storage,
    optimizer_state,
    row_entries,
)
from kernels.segments_triton import COMPILE_DIMS, SIZES, segment_pass
from kernels.sparse_optimizer import SPARSE_OPTIMIZERS, SparseOptimizer
from kernels.sparse_optimizer_triton import OPTIMIZER_IDS, kernel_args


@triton.jit(
    do_not_specialize=SIZES, do_not_specialize_on_alignment=["scale_ptr", "counts_ptr", "freq_ptr"]
)
def _segment_update_kernel(
    keys_ptr,  # int32/int64 [N] the entries' keys (storage rows), stably sorted
    pieces_ptr,  # int64 [N+1] first sorted entry of each piece, then N (padding)
    src_ptr,  # int32 [N] source gradient row of each sorted entry
    scale_ptr,  # float32: source row r is scaled by scale_ptr[r] (has_scale)
    has_scale,  # 0: every scale is 1
    counts_ptr,  # int32: source row r holds counts_ptr[r] lookups (has_counts)
    has_counts,  # 0: every entry is one lookup
    grad_ptr,  # float32 source gradient rows (columns contiguous), in place
    grad_features,  # F: source row r = b * F + f (merge: 1)
    grad_stride_b,  # elements between grad's b and b + 1: row r at b * stride_b + f * stride_f
    grad_stride_f,  # elements between grad's f and f + 1 (merge: 0)
    n,  # N, entries
    dim,  # D
    partial_ptr,  # float32 [2 * cdiv(N, CHUNK), D] slots: partial sums of split segments
    count_slots_ptr,  # int64 slots: their lookups [2 * cdiv(N, CHUNK)], then first-pass counts
    search_steps,  # FINISH: binary-search halvings over N entries (N.bit_length())
    done_ptr,  # int64 out: rows updated by each program (host.run_segments)
    weight_ptr,  # [R, D] storage (fp32/bf16/fp16), updated in place
    weight_stride,  # elements between rows of weight
    m1_ptr,  # adagrad: float32 [R]; adam: float32 [R, D]
    m2_ptr,  # adam: float32 [R, D]
    steps_ptr,  # adam: int64 [R]
    freq_ptr,  # int64 [R] += each row's lookups
    last_step_ptr,  # int64 [R] = step for every updated row
    step,  # this update's step number
    lr,  # learning rate
    eps,  # denominator epsilon
    beta1,  # adam first-moment decay
    beta2,  # adam second-moment decay
    one_minus_beta1,  # 1 - beta1, rounded once on the host in float64
    one_minus_beta2,  # 1 - beta2, same
    log2_beta1,  # log2(beta1): beta1^t = exp2(t * log2_beta1)
    log2_beta2,  # log2(beta2), same
    FINISH: tl.constexpr,  # second pass: one lane per block, long segments from their slots
    OPTIMIZER: tl.constexpr,  # SGD, ADAGRAD or ADAM (sparse_optimizer_triton.OPTIMIZER_IDS)
    CHUNK: tl.constexpr,  # sorted entries per block
    SEGS: tl.constexpr,  # lanes per program (segments_triton.lanes_per_program)
    UNROLL: tl.constexpr,  # rows a lane loads per step
    BLOCK_D: tl.constexpr,  # columns per step (one of common_triton.BLOCK_DS)
    ALIGN: tl.constexpr,  # divides D and weight_stride (row_align)
):
    segment_pass(
        keys_ptr, pieces_ptr, src_ptr, scale_ptr, has_scale, counts_ptr, has_counts, grad_ptr,
        grad_features, grad_stride_b, grad_stride_f, n, dim, partial_ptr, count_slots_ptr,
        search_steps, done_ptr, weight_ptr, weight_stride, m1_ptr, m2_ptr, steps_ptr, freq_ptr, 1,
        last_step_ptr, step, lr, eps, beta1, beta2, one_minus_beta1, one_minus_beta2, log2_beta1,
        log2_beta2, 1.0, 0,
        FINISH, False, OPTIMIZER, CHUNK, SEGS, UNROLL, BLOCK_D, ALIGN,
    )  # fmt: skip


def _run_update(entries, chunk, grad, weight, state, freq, last_step, step, optimizer):
    """Both passes of _segment_update_kernel over grad (host.run_segments); -> int64 counts
    whose sum is the rows updated."""
    m1, m2, steps = optimizer_state(state, weight.device)
    args = (weight, weight.stride(0), m1, m2, steps, freq, last_step, step)
    return host.run_segments(
        _segment_update_kernel,
        entries,
        chunk,
        grad,
        row_align(weight.shape[1], weight.stride(0), *grad[2:]),
        (*args, *kernel_args(optimizer)[1:]),
        True,
        OPTIMIZER=OPTIMIZER_IDS[optimizer.name],
    )


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
    chunk = host.CHUNK  # one value for the sort and the kernels (tests lower it)
    entries = bag_entries(value_rows, weight.shape[0], offsets, batch_size, mean, chunk)
    grad = host.pooled_rows(grad_pooled)
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
    chunk = host.CHUNK
    entries = row_entries(rows, weight.shape[0], counts, scale, chunk)
    grads = grads.contiguous()
    rows_in_place = (grads, 1, grads.stride(0), 0)  # one feature: row r at r * stride(0)
    return _run_update(
        entries, chunk, rows_in_place, weight, state, freq, last_step, step, optimizer
    )


def compile_cases():
    """Calls covering every specialization these launchers make (kernels.compile_check compiles
    them): each optimizer x storage dtype x column class, both passes (N > CHUNK), the pooled
    gradient contiguous or strided."""
    n = 2 * host.CHUNK + 5
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
                    mean = torch.tensor([True, False])
                    # contiguous, and a slice of a concatenation (unaligned for odd d)
                    for grad in (torch.zeros(2, 2, d), torch.zeros(2, 3, d)[:, 1:]):
                        pool_backward_update_triton(
                            weight, state, *counters, 1, value_rows, offsets, grad, mean, o
                        )
                    merge_update_triton(
                        weight, state, *counters, 1, value_rows, torch.zeros(n, d),
                        torch.ones(n, dtype=torch.int32), o, torch.ones(n),
                    )  # fmt: skip

                yield case
