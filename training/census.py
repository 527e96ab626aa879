"""HostSyncCensus: the calls of a CPU run that would block the host on a CUDA device, per line of code.

The table below is what PyTorch's CUDA implementations read back to the host (checked in their sources:
SummaryOps.cu for bincount/histc, Distributions.cpp for multinomial, Indexing.cu for masked_fill with a tensor
value, Nonzero.cu, Unique.cu, Repeat.cu; ``torch.cuda.set_sync_debug_mode`` flags the same calls on a GPU).
Ops that do not sync on CUDA, though their CPU twins may look alike: ``nonzero_static``, ``searchsorted``,
``masked_scatter`` (its size check is a device assert), ``sort``/``topk``/``cumsum``, ``index_add_``,
``index_put_`` with integer indices, ``repeat_interleave`` with ``output_size``, embedding backward (the segment
count stays on the device), collectives other than barrier (NCCL work is ordered on streams, not waited for).
"""

from __future__ import annotations

import sys
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from training.census_sites import HostTensors, Site, ThreadPatches

# aten (and c10d) ops that wait for the device on every call, and how many times
SYNC_OPS = {
    "_local_scalar_dense": 1,  # .item(), bool(t), int(t), float(t), is_nonzero
    "nonzero": 1,  # also torch.where(cond) with one argument, argwhere: the output size
    "_unique2": 1,  # torch.unique: the number of distinct values
    "_unique": 1,
    "unique_dim": 1,
    "unique_consecutive": 1,
    "unique_dim_consecutive": 1,
    "masked_select": 1,  # a nonzero inside
    "bincount": 2,  # min (no negative values) and max (the number of bins)
    "equal": 1,  # eq(...).all().item()
    "allclose": 1,  # isclose(...).all().item()
    "barrier": 1,  # c10d: the host waits for every rank
}


def value_dependent_syncs(name: str, args, kwargs, on_host=lambda t: False) -> int:
    """Syncs of ops that wait only with some arguments (on_host(t): t is a host tensor)."""
    if name in ("index", "index_put", "index_put_", "_index_put_impl_"):
        # a boolean mask index is a nonzero (the number of selected elements)
        indices = args[1] if len(args) > 1 else ()
        return int(any(i is not None and i.dtype == torch.bool for i in indices))
    if name == "repeat_interleave":  # the output size is the sum of the repeats
        repeats = args[1] if len(args) > 1 and isinstance(args[1], torch.Tensor) else args[0]
        tensor_repeats = isinstance(repeats, torch.Tensor) and repeats.dim() > 0
        return int(tensor_repeats and kwargs.get("output_size") is None)
    if name == "histc":  # min == max (the default): the range is read from the data, min and max
        low, high = (list(args[2:4]) + [kwargs.get("min", 0), kwargs.get("max", 0)])[:2]
        return 2 if low == high else 0
    if name == "multinomial":  # the fast path checks the probabilities: two .item()
        samples = args[1] if len(args) > 1 else kwargs.get("num_samples", 1)
        replacement = args[2] if len(args) > 2 else kwargs.get("replacement", False)
        return 2 if not replacement or samples == 1 else 0
    if name in ("masked_fill", "masked_fill_"):  # a tensor value is read with .item()
        value = args[2] if len(args) > 2 else kwargs.get("value")
        return int(isinstance(value, torch.Tensor) and not on_host(value))
    return 0


class HostSyncCensus:
    """Counts, per line of code, the calls made in this thread (and its backward) that would block the host
    on a CUDA device: the step's syncs as a GPU would see them, found on a CPU run of the same code.

        with HostSyncCensus() as census:
            step()
        census.sites   # Counter({"embedding/ids.py:56 _local_scalar_dense": 1, ...})

    What it catches: the aten ops of SYNC_OPS and value_dependent_syncs (a dispatch mode, so also inside
    backward, where __torch_function__ modes are off), each weighted by its syncs per call; reads to the host
    (``.tolist()``, ``.numpy()``, ``.cpu()``, ``.to("cpu")`` without non_blocking: Tensor methods, patched
    for this thread, since on CPU they dispatch nothing); and host->device copies (named ``...(h2d)``):
    ``torch.tensor`` / ``torch.as_tensor`` / ``torch.asarray`` of Python or numpy data with a device,
    ``Tensor.new_tensor``, and ``.to(device)`` / ``copy_`` from a host tensor, unless non_blocking from pinned
    memory (PyTorch copies pageable memory with cudaMemcpyAsync + cudaStreamSynchronize).

    Which tensors are on the host: on a CPU run every tensor is, so the rule is training.census_sites.
    HostTensors: tensors made in the census from Python data without a device, or copied to the host, are
    host tensors, and everything else is a device tensor (an op whose tensors are all host tensors waits for
    nothing). Also host tensors: the step counters torch.optim keeps on the host (0-dim tensors in
    torch/optim) unless fused or capturable.

    What it misses: explicit waits that only exist on CUDA code paths (``torch.cuda.synchronize``,
    ``Event.synchronize``, ``Stream.synchronize``; a CPU run cannot call them), ``.cuda()`` (same), host
    tensors made before the census or in other threads (counted as device tensors: an upper bound), host
    tensors made with an explicit ``device="cpu"`` (counted as device tensors), the later read of a
    ``non_blocking`` device->host copy (its event wait), syncs inside custom C++/CUDA extensions, Triton's own
    calls (its CPU interpreter copies each argument; not counted), and cudaMalloc / allocator flushes.
    ``.cpu().tolist()`` counts twice on CPU (``.cpu()`` returns the tensor itself there): an upper bound.
    For CPU runs only (on CUDA, torch.profiler counts the real syncs: training.profiling.StepProfiler):
    CPU backward runs in the thread that called it, which the thread-local patches rely on, and the dispatch
    mode makes torch.compile run eagerly."""

    def __init__(self):
        self.sites: Counter = Counter()
        self._patches: ThreadPatches | None = None
        census = self

        class _Ops(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                census._dispatched(func, args, kwargs)
                return func(*args, **kwargs)

        self._mode = _Ops()

    def __enter__(self) -> HostSyncCensus:
        self._patches = ThreadPatches()
        self.host = HostTensors(self._patches, on_copy=self._copied)
        self.host.install()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)
        self._patches.undo()

    def _dispatched(self, func, args, kwargs) -> None:
        name = func.overloadpacket.__name__
        if name == "copy_" and len(args) > 1:
            dst, src = self.host.has(args[0]), self.host.has(args[1])
            non_blocking = len(args) > 2 and args[2] or kwargs.get("non_blocking", False)
            if src and not dst and not (non_blocking and args[1].is_pinned()):
                self._count("copy_(h2d)", Site(sys._getframe(1)), 1, args)
            elif dst and not src and not (non_blocking and args[0].is_pinned()):
                self._count("copy_(d2h)", Site(sys._getframe(1)), 1, args)
            return
        syncs = SYNC_OPS.get(name, 0) or value_dependent_syncs(name, args, kwargs, self.host.has)
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        if syncs and not self.host.all_host(tensors):
            self._count(name, Site(sys._getframe(1)), syncs, args)

    def _copied(self, name: str, direction: str, site: Site) -> None:
        self._count(name if direction == "d2h" else f"{name}(h2d)", site, 1, ())

    def _count(self, name: str, site: Site, syncs: int, args) -> None:
        if site.in_triton or site.where is None:
            return  # Triton's interpreter at work, or no code of ours
        first = args[0] if args else None
        if site.in_optim and isinstance(first, torch.Tensor) and first.dim() == 0:
            return  # a step counter: torch.optim keeps it on the host unless fused or capturable
        self.sites[f"{site.where} {name}"] += syncs
