"""Host-side cost of a training step: device->host syncs and kernel launches per step (run.profile_steps).

A GPU step is host-bound when the CPU waits for the device (a sync: ``.item()``, ``.tolist()``,
a blocking copy) or spends its time launching many small kernels. torch.profiler records the
CUDA runtime/driver calls the step makes; this counts them over a few steps after warm-up.

    profiler = StepProfiler(device, first_step=warmup + 1, steps=5)
    for step, batch in enumerate(batches, start=1):   # fetching step s's batch counts for step s
        profiler.before_step(step)
        ... the step ...
        profiler.after_step(step)
    profiler.result   # {"steps": 5, "syncs_per_step": 2.0, "launches_per_step": 57.4, ...} on CUDA

On CPU nothing waits for a device, so the profile predicts instead: HostSyncCensus lists the calls that
would block the host on a GPU (``.item()``, ``.tolist()``, ``bool(t)``, ``nonzero``, ``torch.unique``, ...)
with the line of code that made each (``predicted_syncs_per_step`` and ``sync_sites``);
tests/training/test_host_syncs.py holds the training step to its budget with it.
"""

from __future__ import annotations

import os
import sys
import threading
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# runtime/driver calls that block the host until the device catches up (a D2H copy for .item() is a
# cudaMemcpyAsync followed by cudaStreamSynchronize: counted once, as the sync)
SYNC_CALLS = (
    "cudaStreamSynchronize",
    "cudaDeviceSynchronize",
    "cudaEventSynchronize",
    "cudaMemcpy",
    "cuStreamSynchronize",
    "cuCtxSynchronize",
    "cuEventSynchronize",
)
LAUNCH_CALLS = (
    "cudaLaunchKernel",
    "cudaLaunchKernelExC",
    "cuLaunchKernel",
    "cuLaunchKernelEx",
    "cudaLaunchCooperativeKernel",
)


# Calls that block the host until a CUDA device has computed their input: they read values (or a size that
# depends on values) back into host memory. Most are visible as aten ops (also inside backward, where
# __torch_function__ modes are off); the host copies are not: on CPU they dispatch nothing.
_SYNC_OPS = {
    "_local_scalar_dense",  # .item(), bool(t), int(t), float(t)
    "nonzero",
    "_unique2",
    "_unique",
    "unique_dim",
    "unique_consecutive",
    "masked_select",
    "bincount",
    "equal",
}
_HOST_COPIES = ("tolist", "cpu", "numpy", "to")
# the repository root: sites are named from it
_HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TORCH, _OPTIM = (
    os.path.dirname(torch.__file__),
    os.path.join(os.path.dirname(torch.__file__), "optim"),
)


class HostSyncCensus:
    """Counts, per line of code, the calls made in this thread (and its backward) that would sync with a
    CUDA device: the step's syncs as the GPU would see them, found on a CPU run of the same code.

        with HostSyncCensus() as census:
            step()
        census.sites   # Counter({"embedding/ids.py:56 _local_scalar_dense": 1, ...})

    An upper bound: every tensor counts as a device tensor, except the step counters torch.optim keeps on
    the host. Triton's own calls (its CPU interpreter copies each argument) are not counted. For CPU runs
    only (on CUDA, torch.profiler counts the real syncs: StepProfiler): CPU backward runs in the thread that
    called it, which the host-copy wrappers rely on, and the dispatch mode makes torch.compile run eagerly."""

    def __init__(self):
        self.sites: Counter = Counter()
        census = self

        class _Ops(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                name = func.overloadpacket.__name__
                if name in _SYNC_OPS or _sizes_from_values(name, args, kwargs):
                    census._count(name, args)
                return func(*args, **kwargs)

        self._mode = _Ops()
        self._saved: dict = {}

    def __enter__(self) -> HostSyncCensus:
        # host copies dispatch nothing on CPU (the data is already there): wrap the Tensor methods instead,
        # for this thread only
        thread = threading.get_ident()
        for name in _HOST_COPIES:
            method = self._saved[name] = getattr(torch.Tensor, name)

            def wrapper(tensor, *args, _name=name, _method=method, **kwargs):
                if threading.get_ident() == thread and (
                    _name != "to" or _to_host((tensor, *args), kwargs)
                ):
                    self._count(_name, (tensor,))
                return _method(tensor, *args, **kwargs)

            setattr(torch.Tensor, name, wrapper)
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)
        for name, method in self._saved.items():
            setattr(torch.Tensor, name, method)
        self._saved.clear()

    def _count(self, name: str, args) -> None:
        frame, in_optim = sys._getframe(2), False
        while frame is not None:
            path = frame.f_code.co_filename
            if os.sep + "triton" + os.sep in path:
                return
            in_optim = in_optim or path.startswith(_OPTIM)
            if not path.startswith((_TORCH, __file__, "<")):  # torch, this file, generated code
                break
            frame = frame.f_back
        if frame is None:
            return
        first = args[0] if args else None
        if in_optim and isinstance(first, torch.Tensor) and first.dim() == 0:
            return  # a step counter: torch.optim keeps it on the host unless fused or capturable
        self.sites[
            f"{os.path.relpath(frame.f_code.co_filename, _HERE)}:{frame.f_lineno} {name}"
        ] += 1


def _to_host(args, kwargs) -> bool:
    """Tensor.to(...) into host memory."""
    target = [a for a in (*args[1:], kwargs.get("device")) if isinstance(a, (str, torch.device))]
    return bool(target) and torch.device(target[0]).type == "cpu"


def _sizes_from_values(name: str, args, kwargs) -> bool:
    """Ops whose output size is computed from values: a boolean mask index, repeat_interleave without
    output_size."""
    if name in ("index", "index_put", "index_put_"):
        indices = args[1] if len(args) > 1 else ()
        return any(i is not None and i.dtype == torch.bool for i in indices)
    if name == "repeat_interleave":
        repeats = args[1] if len(args) > 1 and isinstance(args[1], torch.Tensor) else args[0]
        return (
            isinstance(repeats, torch.Tensor)
            and repeats.dim() > 0
            and kwargs.get("output_size") is None
        )
    return False


class StepProfiler:
    """Profiles steps [first_step, first_step + steps) and keeps per-step counts in ``result``: on CUDA the
    runtime's syncs and kernel launches (torch.profiler); on CPU the calls that would sync on a GPU, per line
    (HostSyncCensus)."""

    def __init__(self, device: torch.device, first_step: int, steps: int):
        self.enabled = steps > 0
        self.cuda = device.type == "cuda"
        self.first_step, self.last_step = first_step, first_step + steps - 1
        self.steps = steps
        self.result: dict | None = None
        self._prof = None  # torch.profiler.profile (CUDA) or HostSyncCensus (CPU) while profiling

    def before_step(self, step: int) -> None:
        # only when no step came before it to start from (see after_step)
        if step == self.first_step:
            self._start()

    def _start(self) -> None:
        if not self.enabled or self._prof is not None:
            return
        if self.cuda:
            torch.cuda.synchronize()
            self._prof = torch.profiler.profile(
                activities=[
                    torch.profiler.ProfilerActivity.CPU,
                    torch.profiler.ProfilerActivity.CUDA,
                ]
            )
        else:
            self._prof = HostSyncCensus()
        self._prof.__enter__()

    def after_step(self, step: int) -> None:
        # from the end of the step before: a step's batch (and, pipelined, the next batch's input_dist) is
        # fetched between the two, and belongs to it
        if step == self.first_step - 1:
            self._start()
        if self._prof is None or step != self.last_step:
            return
        if self.cuda:
            # the profile ends with the step's kernels done, not counted as the step's sync
            torch.cuda.synchronize()
        self._prof.__exit__(None, None, None)
        prof, self._prof = self._prof, None
        if not self.cuda:
            self.result = {
                "steps": self.steps,
                "predicted_syncs_per_step": sum(prof.sites.values()) / self.steps,
                "sync_sites": {site: n / self.steps for site, n in sorted(prof.sites.items())},
            }
            return
        calls = [e for e in prof.events() if e.name in SYNC_CALLS or e.name in LAUNCH_CALLS]
        # CUDA runtime calls carry the id of the thread that made them; the training thread is the one that
        # launched the most kernels (the prefetch thread launches a few copies or the synthetic generator)
        launches_by_thread = Counter(e.thread for e in calls if e.name in LAUNCH_CALLS)
        main = launches_by_thread.most_common(1)[0][0] if launches_by_thread else None
        # minus the synchronize above
        syncs = sum(1 for e in calls if e.name in SYNC_CALLS and e.thread == main) - 1
        syncs_all = sum(1 for e in calls if e.name in SYNC_CALLS) - 1
        self.result = {
            "steps": self.steps,
            # the training thread's syncs stall the step; the prefetch thread's only its own side stream
            "syncs_per_step": syncs / self.steps,
            "launches_per_step": launches_by_thread.get(main, 0) / self.steps,
            "other_thread_syncs_per_step": (syncs_all - syncs) / self.steps,
            "other_thread_launches_per_step": (
                sum(launches_by_thread.values()) - launches_by_thread.get(main, 0)
            )
            / self.steps,
        }
