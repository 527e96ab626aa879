"""Triton backward of gather_pool: gradient per unique key, sorted segment sums, no atomics.

The values are stably sorted by their unique index (``inverse``) and summed per key by the segment
kernel (kernels.segments_triton) in its write-out mode: each key's sum of its values'
bag gradients (times 1/len for mean features, times ``scale``) is written once to out[u] in out's
dtype, with its number of values to lookups[u]; rows no value maps to are zeroed in the same pass.
The sums run in value order (as the reference's index_add_), so the bits do not depend on
scheduling; no host sync (the caller passes U).
"""

import torch
import triton
import triton.language as tl

import kernels.pool_backward_update_host_triton as host
from kernels.common_triton import column_block, row_align
from kernels.pool_backward_update_host_triton import bag_entries, check_pooled
from kernels.segments_triton import COMPILE_DIMS, SIZES, segment_pass


@triton.jit(do_not_specialize=SIZES, do_not_specialize_on_alignment=["scale_ptr", "lookups_ptr"])
def _pool_backward_kernel(
    keys_ptr,  # int32/int64 [N] the values' unique indices (inverse), stably sorted
    pieces_ptr,  # int64 [N+1] first sorted value of each piece, then N (padding)
    src_ptr,  # int32 [N] pooled-gradient row (b * F + f) of each sorted value
    scale_ptr,  # float32 [B*F] bag scale (1/len for mean bags) by pooled-gradient row
    has_scale,  # 1
    counts_ptr,  # unused (a key's lookups are its number of values)
    has_counts,  # 0
    grad_ptr,  # float32 [B, F, D] pooled gradient (columns contiguous), in place
    grad_features,  # F: pooled-gradient row r = b * F + f
    grad_stride_b,  # elements between grad's b and b + 1: row r at b * stride_b + f * stride_f
    grad_stride_f,  # elements between grad's f and f + 1
    n,  # N, values
    dim,  # D
    partial_ptr,  # float32 [2 * cdiv(N, CHUNK), D] slots: partial sums of split segments
    count_slots_ptr,  # int64 [2 * cdiv(N, CHUNK)] slots: their lookups
    search_steps,  # FINISH: binary-search halvings over N values (N.bit_length())
    out_ptr,  # [U, D] out (fp32/bf16/fp16), every row written
    out_stride,  # elements between rows of out
    lookups_ptr,  # int32 [U] out: each key's number of values (a scratch word: stride 0)
    lookups_stride,  # elements between entries of lookups
    out_scale,  # multiplies every sum (the caller's 1/W)
    num_unique,  # U
    FINISH: tl.constexpr,  # second pass: one lane per block, long segments from their slots
    CHUNK: tl.constexpr,  # sorted values per block
    SEGS: tl.constexpr,  # lanes per program (segments_triton.lanes_per_program)
    UNROLL: tl.constexpr,  # rows a lane loads per step
    BLOCK_D: tl.constexpr,  # columns per step (one of common_triton.BLOCK_DS)
    ALIGN: tl.constexpr,  # divides D and out_stride (row_align)
):
    # the optimizer's arguments are unused in this mode: out and lookups stand in for them
    segment_pass(
        keys_ptr, pieces_ptr, src_ptr, scale_ptr, has_scale, counts_ptr, has_counts, grad_ptr,
        grad_features, grad_stride_b, grad_stride_f, n, dim, partial_ptr, count_slots_ptr,
        search_steps, lookups_ptr, out_ptr, out_stride, out_ptr, out_ptr, lookups_ptr,
        lookups_ptr, lookups_stride, lookups_ptr, 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
        out_scale, num_unique,
        FINISH, True, 0, CHUNK, SEGS, UNROLL, BLOCK_D, ALIGN,
    )  # fmt: skip


def _check_out(out, lookups, num_unique: int, dim: int, device):
    """ValueError unless out and lookups are [U, D] / [U] destinations on device."""
    if out is not None and (
        out.shape != (num_unique, dim)
        or out.dtype not in (torch.float32, torch.bfloat16, torch.float16)
        or (num_unique > 0 and dim > 0 and out.stride(1) != 1)
        or out.device != device
    ):
        raise ValueError(
            f"out must be fp32/bf16/fp16 [{num_unique}, {dim}] with contiguous rows on {device}, "
            f"got {out.dtype} {tuple(out.shape)} strides {out.stride()} on {out.device}"
        )
    if lookups is not None and (
        lookups.shape != (num_unique,) or lookups.dtype != torch.int32 or lookups.device != device
    ):
        raise ValueError(
            f"lookups must be int32 [{num_unique}] on {device}, got {lookups.dtype} "
            f"{tuple(lookups.shape)} on {lookups.device}"
        )


def pool_backward_triton(
    grad_pooled: torch.Tensor,
    inverse: torch.Tensor,
    offsets: torch.Tensor,
    feature_mean: torch.Tensor,
    num_unique: int,
    scale: float = 1.0,
    out: torch.Tensor | None = None,
    lookups: torch.Tensor | None = None,
) -> torch.Tensor:
    """Same contract as kernels.pool_backward.pool_backward."""
    device = grad_pooled.device
    dim = grad_pooled.shape[-1] if grad_pooled.dim() == 3 else -1
    mean = check_pooled(grad_pooled, inverse, offsets, feature_mean, dim, device)
    _check_out(out, lookups, num_unique, dim, device)
    if out is None:
        out = torch.empty(num_unique, dim, dtype=torch.float32, device=device)
    n = inverse.numel()
    if n == 0 or num_unique == 0:
        out.zero_()
        if lookups is not None:
            lookups.zero_()
        return out
    chunk = host.CHUNK  # one value for the sort and the kernels (tests lower it)
    entries = bag_entries(inverse, num_unique, offsets, grad_pooled.shape[0], mean, chunk)
    if lookups is None:  # the counts go to a scratch word
        lookups = torch.empty(1, dtype=torch.int32, device=device).expand(num_unique)
    stride = out.stride(0) if dim > 0 else 1
    grad = host.pooled_rows(grad_pooled)
    args = (out, stride, lookups, lookups.stride(0), scale, num_unique)
    align = row_align(dim, stride, *grad[2:])
    host.run_segments(_pool_backward_kernel, entries, chunk, grad, align, args, False)
    return out


def compile_cases():
    """Calls covering every specialization this launcher makes (kernels.compile_check compiles
    them): each out dtype x column class, both passes (N > CHUNK), with lookups and without,
    the pooled gradient contiguous or strided."""
    n = 2 * host.CHUNK + 5
    offsets = torch.tensor([0, n - 7, n - 7, n - 2, n], dtype=torch.int64)  # F=2, B=2, empty bag
    inverse = torch.arange(n, dtype=torch.int64) % 5
    mean = torch.tensor([True, False])
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for dim in COMPILE_DIMS:
            # a destination with a lookups column beside each row, as an exchange buffer has
            buffer = torch.zeros(5, column_block(dim) + 8, dtype=dtype)
            counts = buffer.view(torch.int32)[:, -1]
            yield lambda d=dim, b=buffer, c=counts: pool_backward_triton(
                torch.zeros(2, 2, d), inverse, offsets, mean, 5, 0.5, b[:, :d], c
            )
            yield lambda d=dim, t=dtype: pool_backward_triton(
                torch.zeros(2, 2, d), inverse, offsets, mean, 5, out=torch.empty(5, d, dtype=t)
            )
            # the pooled gradient a slice of a concatenation (unaligned for odd d)
            yield lambda d=dim, t=dtype: pool_backward_triton(
                torch.zeros(2, 3, d)[:, 1:],
                inverse,
                offsets,
                mean,
                5,
                out=torch.empty(5, d, dtype=t),
            )
