"""Host side of kernels.pool_backward_update_triton: argument checks, segments, work items (torch ops,
one host sync for the number of rows U).

Values are stably sorted by the row they read, so each row's values form a contiguous segment
(in value order); per sorted value we keep its pooled-gradient row (b * F + f) and bag scale
(1/len for mean bags). Each segment is cut into work items of at most CHUNK values; a segment
longer than that (a hot row) is a long segment, summed through a small fp32 buffer.
"""

from typing import NamedTuple

import torch
import triton

from kernels.common_triton import check_bags
from kernels.sparse_optimizer_triton import kernel_args


def check_args(
    weight, state, freq, last_step, value_rows, offsets, grad_pooled, feature_mean, optimizer
):
    """The launcher's argument checks; returns feature_mean as check_bags gives it (int32)."""
    if (
        weight.dim() != 2
        or weight.dtype not in (torch.float32, torch.bfloat16, torch.float16)
        or weight.stride(1) != 1
    ):
        raise ValueError(
            f"weight must be a 2-D fp32/bf16/fp16 tensor with contiguous rows, got {weight.dtype} "
            f"{tuple(weight.shape)}"
        )
    if grad_pooled.dim() != 3 or grad_pooled.shape[2] != weight.shape[1]:
        raise ValueError(
            f"grad_pooled must be [B, F, D={weight.shape[1]}], got {tuple(grad_pooled.shape)}"
        )
    batch_size, num_features, dim = grad_pooled.shape
    if feature_mean.numel() != num_features:
        raise ValueError(
            f"feature_mean has {feature_mean.numel()} entries, grad_pooled has F={num_features}"
        )
    mean = check_bags(value_rows, offsets, batch_size, feature_mean, weight.device)
    for name, t in (("freq", freq), ("last_step", last_step)):
        if t.dtype != torch.int64 or t.shape != (weight.shape[0],) or t.device != weight.device:
            raise ValueError(
                f"{name} must be int64 [{weight.shape[0]}] on {weight.device}, got {t.dtype} "
                f"{tuple(t.shape)} on {t.device}"
            )
    optimizer.check_state(state, weight)
    return mean


class Segments(NamedTuple):
    """The sorted values grouped by the row they read, one segment per row (fields in the order
    _segment_update_kernel takes them)."""

    start: torch.Tensor  # int64 [U+1] segment s is sorted values start[s] .. start[s+1]
    row: torch.Tensor  # int64 [U] local row of each segment
    grad_row: torch.Tensor  # int32 [N] pooled-gradient row (b * F + f) of each sorted value
    scale: torch.Tensor  # float32 [N] bag scale of each sorted value (1/len for mean bags, else 1)


def segments(
    value_rows: torch.Tensor,
    offsets: torch.Tensor,
    feature_mean: torch.Tensor,
    batch_size: int,
    num_rows: int,
) -> Segments:
    """The values stably sorted by row and grouped into segments; the one host sync (U)."""
    n, device = value_rows.numel(), value_rows.device
    num_features = feature_mean.numel()
    lengths = offsets[1:] - offsets[:-1]
    bag = torch.repeat_interleave(
        torch.arange(lengths.numel(), device=device), lengths, output_size=n
    )
    f, b = bag // batch_size, bag % batch_size
    scale = torch.where(
        feature_mean.to(torch.bool)[f], 1.0 / lengths[bag].clamp(min=1).float(), 1.0
    )
    # 32-bit sort keys when the rows allow it: the radix sort then makes half the passes
    keys = value_rows.to(torch.int32) if num_rows < 2**31 else value_rows
    sorted_rows, order = torch.sort(keys, stable=True)
    head = torch.ones(n, dtype=torch.bool, device=device)
    head[1:] = sorted_rows[1:] != sorted_rows[:-1]
    starts = head.nonzero().squeeze(1)  # the one host sync: U rows
    seg_start = torch.cat([starts, torch.full((1,), n, dtype=torch.int64, device=device)])
    seg_row = sorted_rows[starts].to(torch.int64)
    grad_row = (b * num_features + f).to(torch.int32)[order]
    return Segments(seg_start, seg_row, grad_row, scale[order].contiguous())


class WorkItems(NamedTuple):
    """What the two kernels walk: work items of at most CHUNK values, and the long segments."""

    item_seg: torch.Tensor  # int64 [num_items_bound + 1] segment of each work item
    item_start: torch.Tensor  # int64 [U+1] first work item of each segment
    num_items_bound: int  # programs of _segment_update_kernel
    long_index: torch.Tensor  # int64 [U] index of each long segment among the long ones
    num_long: torch.Tensor  # int64 [1] number of long segments
    num_long_bound: int  # programs of _long_update_kernel, rows of partial
    partial: torch.Tensor  # float32 [num_long_bound, D] zeroed, the long segments' sums
    long_seg: torch.Tensor  # int64 [num_long_bound] segment of each long segment index


def work_items(seg_start: torch.Tensor, n: int, dim: int, chunk: int) -> WorkItems:
    """Work items of the segments seg_start [U+1] over n sorted values, sized without a host sync."""
    device = seg_start.device
    num_segments = seg_start.numel() - 1
    seg_len = seg_start[1:] - seg_start[:-1]
    item_start = torch.zeros(num_segments + 1, dtype=torch.int64, device=device)
    torch.cumsum((seg_len + chunk - 1) // chunk, 0, out=item_start[1:])
    # sum of ceil(len / chunk) <= U + N / chunk
    num_items_bound = num_segments + triton.cdiv(n, chunk)
    # the segment of every work item, without a sync: mark each segment's first item, then a running count
    marks = torch.zeros(num_items_bound + 1, dtype=torch.int64, device=device)
    marks.index_add_(
        0, item_start[1:-1], torch.ones(num_segments - 1, dtype=torch.int64, device=device)
    )
    item_seg = torch.cumsum(marks, 0)
    is_long = seg_len > chunk
    long_index = torch.cumsum(is_long, 0) - is_long.long()
    num_long = is_long.sum().reshape(1)
    num_long_bound = max(1, n // (chunk + 1))  # a long segment has more than chunk values
    partial = torch.zeros(num_long_bound, dim, dtype=torch.float32, device=device)
    long_seg = torch.zeros(num_long_bound, dtype=torch.int64, device=device)
    return WorkItems(
        item_seg,
        item_start,
        num_items_bound,
        long_index,
        num_long,
        num_long_bound,
        partial,
        long_seg,
    )


def update_args(weight, state, freq, last_step, step, value_rows, optimizer) -> tuple:
    """The arguments both kernels take in the same place: the rows to update, their state, the optimizer."""
    # an optimizer without some state still passes tensors of the state's dtypes: the pointer types are
    # part of the compiled signature, and the same variant then serves every optimizer
    m1 = state.get("momentum1", value_rows.new_empty(1, dtype=torch.float32))
    m2 = state.get("momentum2", value_rows.new_empty(1, dtype=torch.float32))
    steps = state.get("row_steps", value_rows.new_empty(1, dtype=torch.int64))
    return (weight, weight.stride(0), m1, m2, steps, freq, last_step, step, *kernel_args(optimizer))
