"""How many kernels a CUDA device launches for one aten op, predicted from the op and its (CPU) arguments
(training.launch_census counts them per line).

A kernel launch is what torch.profiler counts as cudaLaunchKernel / cuLaunchKernel (training.profiling):
copies that are a plain cudaMemcpyAsync (host<->device, or device->device between same-dtype dense tensors of
the same layout, as in ``clone()`` of a contiguous tensor) are not launches. Most ops launch one kernel
(TensorIterator ops, reductions, index_select/index_add_/gather/scatter, cuBLAS GEMMs: a split-K GEMM adds a
reduction kernel this table does not know of); these launch none (views, metadata, allocation, host-side
scalars) or several, as their CUDA implementations (PyTorch 2.x sources) do:

- 0: views, ``empty*``, ``set_``, ``_local_scalar_dense`` (``.item()`` is a memcpy), ``lift_fresh``
  (``torch.tensor(data)``: a memcpy; ``t[i] = 3``: a CPU scalar the kernel takes by value); any op whose
  outputs are all empty;
- 0 or 1: ``copy_``, ``clone``, ``_to_copy``: a memcpy when dtype and dense layout match, else a copy kernel;
- ``sort``: 2 up to 4096 elements per row (index fill + one bitonic block sort), else 3 + key bits / 8 (the
  index fill and CUB's onesweep radix sort: histogram, exclusive sum, a pass per 8 key bits);
- ``cumsum``/``cumprod``: 2 for 1-D (CUB DeviceScan: tile-state init + scan), 1 for inner scans of N-D
  tensors, +1 for a dtype cast;
- ``nonzero``: 3 (CUB count, CUB select-flagged: init + sweep) +1 for N-D (index unravel);
  ``nonzero_static``: 3 (per-block counts, their scan, the write with its padding);
- ``repeat_interleave`` with tensor repeats: 3 (cumsum of the repeats + the fill kernel);
- ``unique*``: a sort + 3 (adjacent difference / unique-by-key, inverse and counts);
- ``index`` / ``index_put_`` with a bool mask: 4 (a nonzero + the indexing kernel); ``index_put_`` with
  accumulate=True: 6 + a pass per 8 bits of the row count (linear index, divide, arange, CUB radix sort of
  (index, position) pairs, indexing_backward_kernel); ``masked_select``: 4;
- ``bincount``: 4 (min, max, zero-fill, histogram); ``histc``: 2 (zero-fill, histogram), +2 when min == max;
- ``equal``: 2 (eq, all); ``allclose``: 11 (isclose's elementwise ops + all);
- ``binary_cross_entropy_with_logits``: 5 (log_sigmoid, 1 - target, mul_, sub_, mean; +1 weight,
  +2 pos_weight);
- ``cat``/``stack``: 1 per 128 inputs (the batched cat kernel);
- ``_foreach_*`` and ``_fused_*`` (optimizers): multi_tensor_apply's launches, one per 2240 chunks of 65536
  elements or per 770/448/336/252/210 tensors at depth 1..5 (32 KB kernel arguments: CUDA >= 12.1, sm70+);
  a list of tensors of several dtypes falls back to one op per tensor.
"""

from __future__ import annotations

import math

import torch

# no kernel: views and metadata, allocations, host-side scalars, profiler annotations
NO_KERNEL = frozenset(
    {
        *("view", "_unsafe_view", "_reshape_alias", "reshape", "view_as", "slice", "select"),
        *("expand", "expand_as", "transpose", "t", "permute", "unsqueeze", "squeeze", "as_strided"),
        *("detach", "alias", "unbind", "split", "split_with_sizes", "chunk", "narrow", "diagonal"),
        *("unfold", "view_as_real", "view_as_complex", "movedim", "transpose_", "t_", "squeeze_"),
        *("unsqueeze_", "as_strided_", "detach_", "_conj", "_neg_view", "resolve_conj"),
        *("resolve_neg", "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided"),
        "empty_permuted",
        *("set_", "resize_", "resize_as_", "record_stream", "is_same_size", "result_type"),
        *("_has_compatible_shallow_copy_type", "is_pinned", "_pin_memory", "_local_scalar_dense"),
        # a Python scalar operand, or a scalar set into a CUDA tensor (t[i] = 3): a CPU tensor passed to the
        # kernel by value
        "scalar_tensor",
        "lift_fresh",  # also torch.tensor(data, device=...): a host->device memcpy
    }
)
# multi_tensor_apply (aten/src/ATen/native/cuda/MultiTensorApply.cuh), with 32 KB kernel arguments
CHUNK_SIZE = 65536
MAX_BLOCKS = 2240
MAX_TENSORS = (770, 448, 336, 252, 210)
MAX_TENSORS_SCALARLIST = (672, 448, 336, 252, 210)
SMALL_SORT = 4096  # at most this many elements per row: one bitonic sort kernel
CAT_BATCH = 128  # inputs per launch of the batched cat kernel


def multi_tensor_launches(numels: list[int], depth: int, scalar_list: bool = False) -> int:
    """Launches of multi_tensor_apply over tensors of these sizes, ``depth`` tensor lists deep."""
    depth = min(max(depth, 1), len(MAX_TENSORS))
    max_tensors = (MAX_TENSORS_SCALARLIST if scalar_list else MAX_TENSORS)[depth - 1]
    launches = tensors = blocks = 0
    for numel in numels:
        if numel == 0:
            continue  # empty tensors are skipped
        tensors += 1
        chunks = -(-numel // CHUNK_SIZE)
        for chunk in range(chunks):
            blocks += 1
            if (tensors == max_tensors and chunk == chunks - 1) or blocks == MAX_BLOCKS:
                launches, blocks = launches + 1, 0
                tensors = 0 if chunk == chunks - 1 else 1  # a tensor cut in two carries over
    return launches + (blocks > 0)


def sort_launches(n: int, dtype: torch.dtype) -> int:
    if n <= SMALL_SORT:
        return 2
    bits = torch.empty(0, dtype=dtype).element_size() * 8
    return 3 + math.ceil(bits / 8)


def launches(name: str, args, kwargs, out) -> int:
    """Kernels the CUDA implementation of aten op ``name`` launches for these arguments and outputs."""
    if name in NO_KERNEL:
        return 0
    if name.startswith(("_foreach_", "_fused_")):
        return _multi_tensor(name, args)
    if _empty(out if out is not None else args[:1]):
        return 0
    rule = _RULES.get(name)
    return rule(args, kwargs, out) if rule is not None else 1


def _tensors(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    return []


def _empty(out) -> bool:
    tensors = _tensors(out)
    return bool(tensors) and all(t.numel() == 0 for t in tensors)


def _multi_tensor(name: str, args) -> int:
    lists = [a for a in args if isinstance(a, (list, tuple)) and a and _tensors(a)]
    if not lists:
        return 0
    if name.startswith("_fused_"):
        # the optimizer's tensor lists, less the 0-dim step counters (read through their own pointers)
        depth = sum(1 for lst in lists if any(t.dim() > 0 for t in lst))
        return multi_tensor_launches([t.numel() for t in lists[0]], depth)
    tensors = [t for lst in lists for t in lst]
    if len({(t.dtype, t.device) for t in tensors}) > 1:
        return sum(1 for t in lists[0] if t.numel())  # the slow path: one op per tensor
    scalar_list = any(isinstance(a, (list, tuple)) and a and not _tensors(a) for a in args)
    # out-of-place ops write a list of outputs too
    depth = len(lists) + (0 if name.endswith("_") else 1)
    chunks = multi_tensor_launches([t.numel() for t in lists[0]], depth, scalar_list)
    return chunks + (name in ("_foreach_norm", "_foreach_max"))  # a second, cleanup kernel


def _same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.is_contiguous() and b.is_contiguous()


def _copy(args, kwargs, out) -> int:
    dst, src = args[0], args[1]
    memcpy = isinstance(src, torch.Tensor) and src.dtype == dst.dtype and _same_layout(dst, src)
    return 0 if memcpy else 1


def _clone(args, kwargs, out) -> int:
    return 0 if args[0].is_contiguous() and out.is_contiguous() else 1


def _to_copy(args, kwargs, out) -> int:
    return _clone(args, kwargs, out) if out.dtype == args[0].dtype else 1


def _sort(args, kwargs, out) -> int:
    self = args[0]
    dim = kwargs.get("dim", args[1] if len(args) > 1 and isinstance(args[1], int) else -1)
    return sort_launches(self.shape[dim] if self.dim() else 1, self.dtype)


def _scan(args, kwargs, out) -> int:
    cast = out is not None and isinstance(out, torch.Tensor) and out.dtype != args[0].dtype
    return (2 if args[0].dim() <= 1 else 1) + cast


def _nonzero(args, kwargs, out) -> int:
    return 3 + (args[0].dim() > 1)


def _unique(args, kwargs, out) -> int:
    return sort_launches(args[0].numel(), args[0].dtype) + 3


def _bool_index(args) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(i is not None and i.dtype == torch.bool for i in indices)


def _index(args, kwargs, out) -> int:
    return 4 if _bool_index(args) else 1


def _index_put(args, kwargs, out) -> int:
    if _bool_index(args):
        return 4
    accumulate = args[3] if len(args) > 3 else kwargs.get("accumulate", False)
    if not accumulate:
        return 1
    rows = max(args[0].shape[0] if args[0].dim() else 1, 2)
    return 6 + math.ceil((rows - 1).bit_length() / 8)


def _histc(args, kwargs, out) -> int:
    low, high = (list(args[2:4]) + [kwargs.get("min", 0), kwargs.get("max", 0)])[:2]
    return 2 + 2 * (low == high)


def _bce_with_logits(args, kwargs, out) -> int:
    weight = args[2] if len(args) > 2 else kwargs.get("weight")
    pos_weight = args[3] if len(args) > 3 else kwargs.get("pos_weight")
    return 5 + (weight is not None) + 2 * (pos_weight is not None)


def _cat(args, kwargs, out) -> int:
    inputs = [t for t in args[0] if t.numel()]
    return max(1, -(-len(inputs) // CAT_BATCH))


def _constant(n: int):
    return lambda args, kwargs, out: n


_RULES = {
    "copy_": _copy,
    "clone": _clone,
    "_to_copy": _to_copy,
    "sort": _sort,
    "cumsum": _scan,
    "cumprod": _scan,
    "nonzero": _nonzero,
    "nonzero_static": _constant(3),
    "repeat_interleave": _constant(3),
    "_unique2": _unique,
    "_unique": _unique,
    "unique_consecutive": _unique,
    "unique_dim": _unique,
    "unique_dim_consecutive": _unique,
    "index": _index,
    "index_put": _index_put,
    "index_put_": _index_put,
    "_index_put_impl_": _index_put,
    "masked_select": _constant(4),
    "bincount": _constant(4),
    "histc": _histc,
    "equal": _constant(2),
    "allclose": _constant(11),
    "binary_cross_entropy_with_logits": _bce_with_logits,
    "cat": _cat,
    "stack": _cat,
}
