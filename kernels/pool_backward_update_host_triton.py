"""Host side of the segment kernel (kernels.segments_triton): argument checks, the sorted entries
and the two passes' launches, sized from N alone: no host sync.

Per call: the keys cast to int32, a stable torch.sort, ``_mark_kernel`` (each sorted entry's
source row, and the pieces starting in each block of positions), a scan of those counts
(common_triton.column_scan_kernel) and ``_pieces_kernel`` (the piece list, a stream compaction
without atomics), then the two passes; a batch's values first get their bag's gradient row and
scale, and their keys cast to int32, from ``_bag_sources_kernel``.

An entry is (key, source row, scale, count): a value of the batch (key: its storage row or its
unique index; source: its bag's pooled-gradient row b * F + f; scale: 1/len for mean bags) or a
gradient row an owner received (key: the storage row; source: the row itself; scale: the
caller's; count: its lookups). Entries are stably sorted by key: each key's entries form a
segment, in entry order. Sorted positions are cut into blocks of CHUNK, and a segment into
pieces at the block boundaries (kernels.segments_triton says how the two passes use them).
The number of pieces is at most N, so the first pass's grid is sized from N: lanes past the
last piece read the padding (N) and do nothing.
"""

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from kernels.common_triton import INTERPRETED, check_bags, column_block, column_scan_kernel

_BLOCK = 1024  # sorted positions per program of the bookkeeping kernels
CHUNK = 128  # sorted entries per block: a longer segment is split and finished by the second pass
ROWS_IN_FLIGHT = 4  # rows a program loads per step: SEGS lanes x UNROLL rows each
LANE_ELEMENTS = 128  # a program's [SEGS, BLOCK_D] tile: 4 fp32 a thread of one warp
# the interpreter runs programs one after another, each op costing the same at any width: it gets
# more lanes per program (the lane logic is the same at any SEGS)
INTERPRETER_LANES = 16


class Entries(NamedTuple):
    """The sorted entries, in the segment kernel's argument order."""

    keys: torch.Tensor  # int32 [N] sorted keys (int64 for key spaces of 2^31 and more)
    pieces: torch.Tensor  # int64 [N+1] first sorted entry of each piece, then N (padding)
    src: torch.Tensor  # int32 [N] source of each sorted entry: its gradient row
    scale: torch.Tensor  # float32 scale of each source (gradient row)
    has_scale: int  # 0: every scale is 1 (scale is not read)
    counts: torch.Tensor  # int32 lookups of each source
    has_counts: int  # 0: every entry counts 1 (counts is not read)


@triton.jit
def _piece_marks(keys_ptr, p, m, CHUNK: tl.constexpr):
    """Whether a piece starts at sorted position p: a segment's first entry, and every block's
    (pieces never cross a block boundary)."""
    key = tl.load(keys_ptr + p, mask=m, other=0)
    prev = tl.load(keys_ptr + p - 1, mask=m & (p > 0), other=0)
    return m & ((p % CHUNK == 0) | (key != prev))


@triton.jit(do_not_specialize=["n"])
def _mark_kernel(
    keys_ptr,  # int32/int64 [N] sorted keys
    order_ptr,  # int64 [N] entry of each sorted position
    value_src_ptr,  # int32 [N] source row of each entry (GATHER)
    src_ptr,  # int32 [N] out: source row of each sorted entry
    pieces_ptr,  # int64 [N+1] out: N everywhere (padding; _pieces_kernel writes the starts)
    block_counts_ptr,  # int32 [blocks] out: pieces starting in each block of BLOCK positions
    n,  # N
    CHUNK: tl.constexpr,  # sorted entries per block
    GATHER: tl.constexpr,  # sources from value_src (else the entry itself)
    BLOCK: tl.constexpr,  # positions per program
):
    p = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = p < n
    mark = _piece_marks(keys_ptr, p, m, CHUNK)
    tl.store(block_counts_ptr + tl.program_id(0), tl.sum(mark.to(tl.int32), axis=0))
    tl.store(pieces_ptr + p, n.to(tl.int64), mask=p <= n)
    entry = tl.load(order_ptr + p, mask=m, other=0)
    if GATHER:
        src = tl.load(value_src_ptr + entry, mask=m, other=0)
    else:
        src = entry.to(tl.int32)
    tl.store(src_ptr + p, src, mask=m)


@triton.jit(do_not_specialize=["n"])
def _pieces_kernel(
    keys_ptr,  # int32/int64 [N] sorted keys
    block_start_ptr,  # int32 [blocks] pieces starting before each block
    pieces_ptr,  # int64 [N+1] out: first sorted entry of each piece (the padding stays)
    n,  # N
    CHUNK: tl.constexpr,  # sorted entries per block
    BLOCK: tl.constexpr,  # positions per program
):
    p = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mark = _piece_marks(keys_ptr, p, p < n, CHUNK).to(tl.int32)
    piece = tl.load(block_start_ptr + tl.program_id(0)) + tl.cumsum(mark, axis=0) - mark
    tl.store(pieces_ptr + piece, p.to(tl.int64), mask=mark != 0)


@triton.jit(do_not_specialize=["batch_size", "num_features"])
def _bag_sources_kernel(
    offsets_ptr,  # int64 [F*B+1] bag boundaries into the values (bags feature-major)
    mean_ptr,  # int32 [F] 1 where feature f is mean-pooled
    keys_ptr,  # int64 [N] the values' keys (NARROW)
    narrow_ptr,  # int32 [N] out (NARROW): the keys as int32, the sort's keys
    value_src_ptr,  # int32 [N] out: pooled-gradient row b * F + f of each value
    scale_ptr,  # float32 [B*F] out: scale of each pooled-gradient row (1/len for mean bags)
    batch_size,  # B
    num_features,  # F
    NARROW: tl.constexpr,  # also write the keys as int32 (key space below 2^31)
    BAGS: tl.constexpr,  # bags per program
):
    bag = tl.program_id(0) * BAGS + tl.arange(0, BAGS)
    m = bag < batch_size * num_features
    start = tl.load(offsets_ptr + bag, mask=m, other=0)
    length = (tl.load(offsets_ptr + bag + 1, mask=m, other=0) - start).to(tl.int32)
    f = bag // batch_size
    row = (bag % batch_size) * num_features + f
    is_mean = tl.load(mean_ptr + f, mask=m, other=0) != 0
    # IEEE division, as the reference's 1.0 / len: the same bits
    inverse = tl.div_rn(tl.full([BAGS], 1.0, tl.float32), tl.maximum(length, 1).to(tl.float32))
    tl.store(scale_ptr + row, tl.where(is_mean, inverse, 1.0), mask=m)
    # the bags of a program mostly share one feature, so one length
    for j in range(0, tl.max(length)):
        tl.store(value_src_ptr + start + j, row, mask=m & (j < length))
        if NARROW:
            key = tl.load(keys_ptr + start + j, mask=m & (j < length), other=0)
            tl.store(narrow_ptr + start + j, key.to(tl.int32), mask=m & (j < length))


def sort_entries(keys: torch.Tensor, key_space: int, chunk: int, value_src=None, narrow=None):
    """(sorted keys, piece starts, source of each sorted entry) of keys int64 [N >= 1] in
    [0, key_space); sources: value_src int32 [N] of each entry, or the entry itself; narrow: the
    keys already cast to int32, or None."""
    n = keys.numel()
    if n >= 2**31:  # the kernels' positions are int32
        raise ValueError(f"at most 2^31 - 1 entries per call, got {n}")
    # 32-bit sort keys when the keys allow it: the radix sort then makes half the passes
    if narrow is None:
        narrow = keys.to(torch.int32) if key_space < 2**31 else keys
    sorted_keys, order = torch.sort(narrow, stable=True)
    device = keys.device
    blocks = triton.cdiv(n + 1, _BLOCK)  # the programs also cover the padding entry N
    src = torch.empty(n, dtype=torch.int32, device=device)
    # at most N pieces: the rest of the N+1 entries hold N
    pieces = torch.empty(n + 1, dtype=torch.int64, device=device)
    block_counts = torch.empty(blocks, dtype=torch.int32, device=device)
    gather = value_src is not None
    _mark_kernel[(blocks,)](
        sorted_keys, order, value_src if gather else src, src, pieces, block_counts, n,
        CHUNK=chunk, GATHER=gather, BLOCK=_BLOCK,
    )  # fmt: skip
    total = torch.empty(1, dtype=torch.int64, device=device)  # not read
    column_scan_kernel[(1,)](block_counts, blocks, 1, total, SCAN=_BLOCK)
    _pieces_kernel[(blocks,)](sorted_keys, block_counts, pieces, n, CHUNK=chunk, BLOCK=_BLOCK)
    return sorted_keys, pieces, src


def bag_entries(
    keys: torch.Tensor,
    key_space: int,
    offsets: torch.Tensor,
    batch_size: int,
    mean: torch.Tensor,
    chunk: int,
) -> Entries:
    """The values of a batch as entries: keys int64 [N] (values in bag order, bags feature-major),
    offsets int64 [F*B+1], mean int32 [F]; sources are rows of grad_pooled [B, F, D]."""
    n, device, num_bags = keys.numel(), keys.device, offsets.numel() - 1
    value_src = torch.empty(n, dtype=torch.int32, device=device)
    scale = torch.empty(num_bags, dtype=torch.float32, device=device)
    # the sort's int32 keys written beside the sources (every value lies in a bag)
    narrow = torch.empty(n, dtype=torch.int32, device=device) if key_space < 2**31 else None
    if num_bags:
        _bag_sources_kernel[(triton.cdiv(num_bags, 128),)](
            offsets, mean, keys, value_src if narrow is None else narrow, value_src, scale,
            batch_size, mean.numel(), NARROW=narrow is not None, BAGS=128, num_warps=4,
        )  # fmt: skip
    sorted_keys, pieces, src = sort_entries(keys, key_space, chunk, value_src, narrow)
    return Entries(sorted_keys, pieces, src, scale, 1, src, 0)


def row_entries(
    rows: torch.Tensor,
    key_space: int,
    counts: torch.Tensor,
    scale: torch.Tensor | None,
    chunk: int,
) -> Entries:
    """Received gradient rows as entries: rows int64 [K] storage rows, counts [K] their lookups,
    scale float32 [K] or None; sources are the rows of grads [K, D] themselves."""
    sorted_keys, pieces, src = sort_entries(rows, key_space, chunk)
    counts = counts.to(torch.int32).contiguous()  # one pointer type (lookups per entry < 2^31)
    if scale is None:  # not read: any float32 tensor stands in
        return Entries(sorted_keys, pieces, src, torch.empty(1, device=rows.device), 0, counts, 1)
    return Entries(sorted_keys, pieces, src, scale.contiguous(), 1, counts, 1)


def check_storage(weight, state, freq, last_step, optimizer) -> None:
    """ValueError unless weight, its optimizer state and its counters fit together."""
    if (
        weight.dim() != 2
        or weight.dtype not in (torch.float32, torch.bfloat16, torch.float16)
        or weight.stride(1) != 1
    ):
        raise ValueError(
            f"weight must be a 2-D fp32/bf16/fp16 tensor with contiguous rows, got {weight.dtype} "
            f"{tuple(weight.shape)}"
        )
    for name, t in (("freq", freq), ("last_step", last_step)):
        if t.dtype != torch.int64 or t.shape != (weight.shape[0],) or t.device != weight.device:
            raise ValueError(
                f"{name} must be int64 [{weight.shape[0]}] on {weight.device}, got {t.dtype} "
                f"{tuple(t.shape)} on {t.device}"
            )
    optimizer.check_state(state, weight)


def check_pooled(grad_pooled, value_rows, offsets, feature_mean, dim: int, device) -> torch.Tensor:
    """Argument checks of a pooled gradient and its bags; returns feature_mean as int32."""
    if grad_pooled.dim() != 3 or grad_pooled.shape[2] != dim or not grad_pooled.is_floating_point():
        raise ValueError(
            f"grad_pooled must be a float [B, F, D={dim}], got {grad_pooled.dtype} "
            f"{tuple(grad_pooled.shape)}"
        )
    batch_size, num_features, _ = grad_pooled.shape
    if feature_mean.numel() != num_features:
        raise ValueError(
            f"feature_mean has {feature_mean.numel()} entries, grad_pooled has F={num_features}"
        )
    return check_bags(value_rows, offsets, batch_size, feature_mean, device)


def check_rows(weight, rows, grads, counts, scale) -> None:
    """Argument checks of merge_update's received rows."""
    k, dim = rows.numel(), weight.shape[1]
    if rows.dim() != 1 or rows.dtype != torch.int64:
        raise ValueError(f"rows must be 1-D int64, got {rows.dtype} {tuple(rows.shape)}")
    if grads.dtype != torch.float32 or grads.shape != (k, dim):
        raise ValueError(
            f"grads must be float32 [{k}, {dim}], got {grads.dtype} {tuple(grads.shape)}"
        )
    if counts.dtype not in (torch.int32, torch.int64) or counts.shape != (k,):
        raise ValueError(
            f"counts must be int32/int64 [{k}], got {counts.dtype} {tuple(counts.shape)}"
        )
    if scale is not None and (scale.dtype != torch.float32 or scale.shape != (k,)):
        raise ValueError(f"scale must be float32 [{k}], got {scale.dtype} {tuple(scale.shape)}")
    for name, t in (("rows", rows), ("grads", grads), ("counts", counts), ("scale", scale)):
        if t is not None and t.device != weight.device:
            raise ValueError(f"{name} on {t.device}, weight on {weight.device}")


def optimizer_state(state, device) -> tuple:
    """(momentum1, momentum2, row_steps) pointers: an optimizer without some state still passes
    tensors of the state's dtypes (the pointer types are part of the compiled signature)."""
    m1 = state.get("momentum1", torch.empty(1, dtype=torch.float32, device=device))
    m2 = state.get("momentum2", torch.empty(1, dtype=torch.float32, device=device))
    steps = state.get("row_steps", torch.empty(1, dtype=torch.int64, device=device))
    return m1, m2, steps


def lanes_per_program(block_d: int, align: int) -> tuple[int, int]:
    """(SEGS, UNROLL): a [SEGS, BLOCK_D] tile holds 4 fp32 columns (one 16-byte vector) per thread,
    half that for unaligned rows (moved element by element: an address each, no spills), and a
    step loads ROWS_IN_FLIGHT rows (more would hold more registers: spills)."""
    lanes = max(1, LANE_ELEMENTS // block_d // (1 if align == 8 else 2))
    unroll = max(1, ROWS_IN_FLIGHT // lanes)
    return lanes * INTERPRETER_LANES if INTERPRETED else lanes, unroll


def pooled_rows(grad_pooled: torch.Tensor) -> tuple:
    """(grad, F, stride_b, stride_f) of a pooled gradient [B, F, D] read in place: the segment
    kernel finds row b * F + f at b * stride_b + f * stride_f (e.g. a slice of the dense
    network's concatenation: no copy); copied only when it is not float32 or its columns are
    not contiguous."""
    grad = grad_pooled.float()
    if grad.shape[2] > 1 and grad.stride(2) != 1:
        grad = grad.contiguous()
    return grad, grad.shape[1], grad.stride(0), grad.stride(1)


def run_segments(
    kernel, entries, chunk: int, grad: tuple, align: int, args: tuple, count_rows: bool, **modes
):
    """Both passes of ``kernel`` (a wrapper of segment_pass) over entries sorted in blocks of
    chunk; grad: (tensor, F, stride_b, stride_f), the source rows (pooled_rows), D its last
    dim; args: the kernel's arguments after done_ptr.
    count_rows: -> int64 [programs] device counts whose sum is the rows updated (each program
    counts its own, no atomics, and nothing sums them here: a launch, for a number read at log
    steps only). The first pass writes its counts after the count slots; the second pass's
    programs add them in (at most CHUNK each), and only the second pass's counts are returned,
    at most N / CHUNK of them: a caller keeping them for a while keeps little."""
    n, dim, device = entries.keys.numel(), grad[0].shape[-1], grad[0].device
    block_d = column_block(dim)
    segs, unroll = lanes_per_program(block_d, align)
    blocks = triton.cdiv(n, chunk)
    partial = torch.empty(2 * blocks, dim, dtype=torch.float32, device=device)
    first = triton.cdiv(n, segs)
    # with one block no segment crosses a block boundary
    second = triton.cdiv(blocks, segs) if blocks > 1 else 0
    # the slots, then the first pass's counts (segment_pass finds them there)
    count_slots = torch.empty(2 * blocks + first, dtype=torch.int64, device=device)
    done = (count_slots[2 * blocks :], torch.empty(second, dtype=torch.int64, device=device))
    for finish, programs in ((False, first), (True, second)):
        if programs == 0:
            continue
        counted = (done[finish],) if count_rows else ()
        kernel[(programs,)](
            *entries, *grad, n, dim, partial, count_slots, n.bit_length(), *counted, *args,
            FINISH=finish, CHUNK=chunk, SEGS=segs, UNROLL=unroll, BLOCK_D=block_d, ALIGN=align,
            num_warps=1, **modes,
        )  # fmt: skip
    if not count_rows:
        return None
    return done[1] if second else done[0]  # one block: the first pass's counts, at most CHUNK


def compile_cases():
    """Calls covering every specialization of this module's kernels (kernels.compile_check
    compiles them): sources gathered or not, 32- and 64-bit sort keys (cast by the bag kernel or
    not)."""
    offsets = torch.tensor([0, 2, 2, 5, 6], dtype=torch.int64)  # F=2, B=2, an empty bag
    keys = torch.tensor([0, 1, 2, 0, 3, 4], dtype=torch.int64)
    mean = torch.tensor([1, 0], dtype=torch.int32)
    counts = torch.ones(6, dtype=torch.int32)
    yield lambda: bag_entries(keys, 5, offsets, 2, mean, CHUNK)
    yield lambda: bag_entries(keys, 2**31, offsets, 2, mean, CHUNK)
    yield lambda: row_entries(keys, 5, counts, None, CHUNK)
    yield lambda: row_entries(keys, 2**31, counts, torch.ones(6), CHUNK)
