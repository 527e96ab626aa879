"""LaunchCensus: the kernel launches a CUDA step would make, counted per line of code on a CPU run.

Three kinds of launch are counted at the line that made them:

- aten ops (a dispatch mode, so backward too), weighted by training.launch_table: views and metadata launch
  nothing, multi-kernel ops (sort, cumsum, nonzero, index_put_ with accumulate, ...) several, foreach and fused
  optimizer ops one per multi_tensor_apply chunk; ops whose tensors are all host tensors
  (training.census_sites.HostTensors) run on the CPU and launch nothing;
- Triton kernels: ``kernel[grid](...)`` (JITFunction.run, or InterpretedFunction.run under TRITON_INTERPRET=1),
  by kernel name, unless the grid is empty;
- collectives: every c10d op (all_to_all_single, all_reduce, broadcast, also DDP's own from C++) is one NCCL
  kernel.

Each launch also lands in a component: the training.stages stage running it (StageTimer.stage is followed),
or "data" (pipeline/ code) or "other" outside every stage. Ops of the dense network (the outermost module of
DENSE_PACKAGES: its forward, and in backward the autograd nodes its forward made) and of torch.optim
optimizers' step() go to ``set_aside`` instead (when set_aside=True): on a GPU the dense network is compiled
and the optimizer fused, so training.launch_prediction replaces these eager CPU ops with what CUDA would run.
"""

from __future__ import annotations

import sys
from collections import Counter
from contextlib import contextmanager

import torch
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)
from torch.utils._python_dispatch import TorchDispatchMode

from training import launch_table
from training.census_sites import HostTensors, Site, ThreadPatches
from training.stages import StageTimer

# the packages whose outermost module is the dense network (compiled on CUDA)
DENSE_PACKAGES = ("models",)


class DenseCall:
    """The dense network as the census saw it: the module and its inputs (shape, dtype, requires_grad), and
    how many forwards and backwards ran."""

    def __init__(self, module: torch.nn.Module, inputs: tuple):
        self.module = module
        self.inputs = [
            (tuple(a.shape), a.dtype, a.requires_grad) if isinstance(a, torch.Tensor) else a
            for a in inputs
        ]
        self.forwards = self.backwards = 0


class LaunchCensus:
    """Counts, per line of code and per component, the kernel launches this thread's ops (and its backward)
    would make on a CUDA device.

        with LaunchCensus() as census:
            step()
        census.sites        # Counter({"embedding/ids.py:51 repeat_interleave": 3, ...})
        census.components   # Counter({"input_dist": 12, ...})

    set_aside: put the dense network's and torch.optim's ops in ``set_aside`` (part -> sites) instead.
    run_triton=False counts Triton launches without running them (for compiled code whose kernels need no
    results to be counted). CPU runs only, as training.census.HostSyncCensus.

    What it misses: code that only runs on CUDA (``if t.is_cuda`` branches, CUDA events), kernels a library
    adds on its own (cuBLAS split-K reductions, CUB's temporary-storage passes beyond training.launch_table,
    NCCL's proxy work), memcpys (not launches, as torch.profiler's count in training.profiling), factory calls
    without a device (host tensors on CUDA; counted as device launches: an upper bound), Triton autotuning
    benchmarks, C++ extensions' own launches, and other threads (the prefetch thread's copies)."""

    def __init__(self, set_aside: bool = True, run_triton: bool = True):
        self.sites: Counter = Counter()
        self.components: Counter = Counter()
        self.set_aside: dict[str, Counter] = {"dense": Counter(), "optimizer": Counter()}
        self.set_aside_components: dict[str, Counter] = {"dense": Counter(), "optimizer": Counter()}
        self.dense: DenseCall | None = None
        self.optimizer = None  # the torch.optim optimizer that stepped, and how many times
        self.optimizer_steps = 0
        self._set_aside, self._run_triton = set_aside, run_triton
        self._stages: list[str] = []
        self._dense_depth, self._dense_root, self._in_optimizer = 0, None, False
        self._dense_counted = None  # the module whose calls DenseCall counts
        self._dense_nodes: set = set()
        self._handles: list = []
        census = self

        class _Ops(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                out = func(*args, **kwargs)
                census._dispatched(func, args, kwargs, out)
                return out

        self._mode = _Ops()

    def total(self) -> int:
        return sum(self.sites.values())

    def __enter__(self) -> LaunchCensus:
        self._patches = ThreadPatches()
        self.host = HostTensors(self._patches)
        self.host.install()
        self._patches.patch(StageTimer, "stage", self._follow_stage)
        self._patch_triton()
        if self._set_aside:
            self._hook_dense_and_optimizer()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._patches.undo()
        self._dense_nodes.clear()

    # ---- counting ----------------------------------------------------------------------------------------
    def _dispatched(self, func, args, kwargs, out) -> None:
        namespace, name = func.namespace, func.overloadpacket.__name__
        if namespace == "profiler":
            return
        site = Site(sys._getframe(1))
        if site.in_triton:
            return  # Triton's interpreter copying a kernel's arguments
        if namespace == "c10d":  # DDP's collectives run eagerly around a compiled network too
            self._add(site, f"c10d.{name}", 1, set_aside=False)
            return
        tensors = [t for a in (*args, *kwargs.values()) for t in _tensors(a)]
        if self.host.all_host(tensors):
            return  # runs on the CPU in a CUDA run too
        if name == "copy_" and any(self.host.has(t) for t in args[:2]):
            launches = 0  # host<->device: a memcpy
        else:
            launches = launch_table.launches(name, args, kwargs, out)
        if launches:
            self._add(site, name, launches)

    def _add(self, site: Site, label: str, launches: int, set_aside: bool = True) -> None:
        key = f"{site.where or '?'} {label}"
        stage = self._stages[-1] if self._stages else None
        data = site.where is not None and site.where.startswith("pipeline/")
        component = stage or ("data" if data else "other")
        part = self._part() if self._set_aside and set_aside else None
        if part is not None:
            self.set_aside[part][key] += launches
            self.set_aside_components[part][component] += launches
            return
        self.sites[key] += launches
        self.components[component] += launches

    def _part(self) -> str | None:
        """The part ("dense", "optimizer") of an op that training.launch_prediction replaces, or None."""
        if self._in_optimizer:
            return "optimizer"
        if self._dense_depth:
            return "dense"
        node = torch._C._current_autograd_node() if self._dense_nodes else None
        return "dense" if node is not None and node in self._dense_nodes else None

    # ---- stages --------------------------------------------------------------------------------------------
    def _follow_stage(self, original):
        census = self

        @contextmanager
        def stage(timer, name: str):
            mine = census._patches.mine()
            if mine:
                census._stages.append(name)
            try:
                with original(timer, name):
                    yield
            finally:
                if mine:
                    census._stages.pop()

        return stage

    # ---- Triton ------------------------------------------------------------------------------------------
    def _patch_triton(self) -> None:
        try:
            from triton.runtime.interpreter import InterpretedFunction
            from triton.runtime.jit import JITFunction
        except ImportError:  # no Triton: nothing launches it
            return
        for cls in (JITFunction, InterpretedFunction):
            self._patches.patch(cls, "run", self._count_launch)

    def _count_launch(self, original):
        census = self

        def run(kernel, *args, grid, warmup, **kwargs):
            if warmup or not census._patches.mine():
                return original(kernel, *args, grid=grid, warmup=warmup, **kwargs)
            if _grid_size(kernel, grid, args, kwargs):
                census._add(Site(sys._getframe(1)), f"triton.{kernel.__name__}", 1)
            if census._run_triton:
                return original(kernel, *args, grid=grid, warmup=warmup, **kwargs)
            return None

        return run

    # ---- the dense network and the optimizer -------------------------------------------------------------
    def _hook_dense_and_optimizer(self) -> None:
        modules = torch.nn.modules.module
        self._handles += [
            modules.register_module_forward_pre_hook(self._dense_enter),
            modules.register_module_forward_hook(self._dense_exit),
            register_optimizer_step_pre_hook(self._optimizer_enter),
            register_optimizer_step_post_hook(self._optimizer_exit),
        ]

    def _dense_enter(self, module, inputs) -> None:
        if not self._patches.mine():
            return
        if self._dense_depth:
            self._dense_depth += module is self._dense_root
        elif type(module).__module__.split(".")[0] in DENSE_PACKAGES:
            self._dense_root, self._dense_depth = module, 1
            if self.dense is None:
                # predicted without DDP around the network (models.objective.Objective.bare)
                self.dense = DenseCall(getattr(module, "bare", lambda: module)(), inputs)
                self._dense_counted = module

    def _dense_exit(self, module, inputs, output) -> None:
        if not self._patches.mine() or module is not self._dense_root or not self._dense_depth:
            return
        self._dense_depth -= 1
        if self._dense_depth or self.dense is None or module is not self._dense_counted:
            return
        self.dense.forwards += 1
        outputs = [t for t in _tensors(output) if t.grad_fn is not None]
        stop = {t.grad_fn for t in _tensors(inputs) if t.grad_fn is not None}
        self._dense_nodes |= _graph_nodes([t.grad_fn for t in outputs], stop)
        if outputs:
            dense, counted = self.dense, []

            def backward_ran(grad):
                if not counted:
                    counted.append(True)
                    dense.backwards += 1

            outputs[0].register_hook(backward_ran)

    def _optimizer_enter(self, optimizer, args, kwargs) -> None:
        if self._patches.mine():
            self.optimizer, self._in_optimizer = optimizer, True
            self.optimizer_steps += 1

    def _optimizer_exit(self, optimizer, args, kwargs) -> None:
        if self._patches.mine():
            self._in_optimizer = False


def _tensors(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors(o)]
    return []


def _graph_nodes(roots: list, stop: set) -> set:
    """The autograd nodes reachable from roots without passing a node of stop, less the parameters'
    AccumulateGrad (whose hooks, DDP's all-reduce among them, run eagerly under torch.compile too)."""
    seen, todo = set(), list(roots)
    while todo:
        node = todo.pop()
        if node is None or node in seen or node in stop:
            continue
        if type(node).__name__ == "AccumulateGrad":
            continue
        seen.add(node)
        todo += [child for child, _ in node.next_functions]
    return seen


def _grid_size(kernel, grid, args, kwargs) -> int:
    if callable(grid):
        meta = dict(zip(kernel.arg_names, args, strict=False))
        meta.update(kwargs)
        grid = grid(meta)
    size = 1
    for g in grid:
        size *= int(g)
    return size
