"""The launch census of a CPU run as a CUDA run would see it (training.profiling.StepProfiler reports it).

training.launch_census.LaunchCensus counts the eager CPU ops; two parts of a CUDA step run differently, and
their eager ops (set aside by the census) are replaced here:

- the dense network: on CUDA ``model.compile = "auto"`` runs it through ``torch.compile`` (inductor). The
  prediction compiles a copy of the network the census saw, with inductor's Triton backend on CPU
  (``cpu_backend="triton"``, code generated for an sm_90 target through a stand-in Triton driver), under the
  autocast a GPU run uses (``train.bf16``: bf16), at the shapes of the run, with the dense features in the
  dtype a GPU run's loader gives them (models.network.dense_input_dtype), and counts one steady-state call:
  every Triton kernel the generated code launches (counted, never run: the kernels are stubbed, so bf16 works
  under the interpreter) and every aten op it calls (the GEMMs: ``extern_kernels.mm/addmm/bmm``, cuBLAS),
  forward and backward graph apart. On a GPU, fusion can differ where inductor's choices depend on the device
  (split reductions use the SM count; a cat of a few inputs is one pointwise kernel on CUDA, copies on CPU)
  or on the batch size (the test runs are tiny). The network is compiled with its loss (models.objective) as one
  graph; under DDP (W > 1) dynamo breaks the graph at DDP's forward, so the loss is a graph of its own there (a
  kernel or two more than predicted), and DDP's graph breaks at bucket boundaries (one bucket for these small
  networks) are not modelled.
- the dense optimizer: on CUDA training/build.py makes Adam ``fused`` and every other torch.optim optimizer
  ``foreach`` (FUSED_ON_CUDA mirrors it). The prediction runs a copy of the optimizer with those flags, over
  tensors shaped like its parameters, and counts its second step: ``_fused_*`` and ``_foreach_*`` ops are
  multi_tensor_apply chunks (training.launch_table), ops on host step counters launch nothing.
"""

from __future__ import annotations

import contextlib
import copy
import os
import warnings
from collections import Counter

import torch

from kernels.compile_check import TargetDriver
from models.network import dense_input_dtype
from training.launch_census import DenseCall, LaunchCensus

# torch.optim optimizers training/build.py makes fused on CUDA; the others are foreach there
FUSED_ON_CUDA = ("Adam", "AdamW")
PARTS = ("forward", "backward")  # of a compiled dense call


@contextlib.contextmanager
def _triton_codegen_on_cpu():
    """Inductor generates Triton kernels for CPU tensors, loaded as interpreter kernels that never run (no
    result is needed to count launches, and the interpreter has no bf16)."""
    from triton.backends.compiler import GPUTarget
    from triton.runtime.driver import driver
    from triton.runtime.interpreter import InterpretedFunction

    previous_driver, previous_env = driver._active, os.environ.get("TRITON_INTERPRET")
    previous_run = InterpretedFunction.run
    os.environ["TRITON_INTERPRET"] = "1"
    driver.set_active(TargetDriver(GPUTarget("cuda", 90, 32)))
    InterpretedFunction.run = lambda kernel, *args, grid, warmup, **kwargs: None
    try:
        # inductor warns that CPU Triton kernels cannot run: they never do here
        with torch._inductor.config.patch(cpu_backend="triton"), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        InterpretedFunction.run = previous_run
        driver._active = previous_driver
        if previous_env is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = previous_env


@contextlib.contextmanager
def _count_compiled_graphs(census: LaunchCensus):
    """Every call of an inductor-compiled graph runs under census: what the generated code launches. (A
    dispatch mode around torch.compile's entry would make it run eagerly; inside the graph call it does not.)"""
    from torch._inductor.output_code import CompiledFxGraph

    original = CompiledFxGraph.__call__

    def call(graph, inputs):
        with census:
            return original(graph, inputs)

    CompiledFxGraph.__call__ = call
    try:
        yield
    finally:
        CompiledFxGraph.__call__ = original


def _labels(sites: Counter) -> Counter:
    """Launches by label ("path:line label" sites summed over their paths and lines)."""
    out: Counter = Counter()
    for site, n in sites.items():
        out[site.split(" ", 1)[1]] += n
    return out


def predict_compiled_dense(dense: DenseCall, autocast: torch.dtype | None) -> dict:
    """Launches of one call of the compiled dense network: {"forward": label -> n, "backward": ...}, and
    "graph_breaks": dynamo's graph breaks in it (the eager ops between graphs are not counted)."""
    module = copy.deepcopy(dense.module)
    specs = list(dense.inputs)
    if specs and isinstance(specs[0], tuple) and specs[0][1] == torch.float32:
        # the dense features as a GPU run's loader gives them (training.build: Parts.dense_dtype)
        specs[0] = (specs[0][0], dense_input_dtype(module, autocast), specs[0][2])
    inputs = [
        _like(*spec) if isinstance(spec, tuple) and len(spec) == 3 else spec for spec in specs
    ]
    # dynamo marks the frames it saw run under a dispatch mode (the census's) to run eagerly from then on:
    # a fresh start (a CPU run that compiles its own dense network recompiles it once)
    torch.compiler.reset()
    compiled = torch.compile(module)  # the default mode, as training/build.py
    census = LaunchCensus(set_aside=False, run_triton=False)
    with _triton_codegen_on_cpu():
        _forward_backward(compiled, inputs, autocast)  # compiles (and tunes) both graphs
        census.sites.clear()
        with _count_compiled_graphs(census):
            outputs = _forward(compiled, inputs, autocast)
            forward = _labels(census.sites)
            census.sites.clear()
            _backward(outputs)
            backward = _labels(census.sites)
    from torch._dynamo.utils import graph_break_reasons  # cleared by torch.compiler.reset()

    breaks = len(graph_break_reasons)
    return {"forward": forward, "backward": backward, "graph_breaks": breaks}


def _like(shape, dtype, requires_grad) -> torch.Tensor:
    floating = dtype.is_floating_point
    t = torch.randn(shape, dtype=dtype) if floating else torch.zeros(shape, dtype=dtype)
    return t.requires_grad_(requires_grad)


def _forward(compiled, inputs, autocast):
    with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        out = compiled(*inputs)
    return [t for t in (out if isinstance(out, (list, tuple)) else [out]) if t.requires_grad]


def _backward(outputs) -> None:
    if outputs:
        sum(t.float().sum() for t in outputs).backward()


def _forward_backward(compiled, inputs, autocast) -> None:
    _backward(_forward(compiled, inputs, autocast))


def predict_cuda_optimizer(optimizer: torch.optim.Optimizer) -> Counter:
    """Launches of one steady-state step of the optimizer as CUDA runs it (fused or foreach), by op."""
    flags = {"fused": True} if type(optimizer).__name__ in FUSED_ON_CUDA else {"foreach": True}
    groups = []
    for group in optimizer.param_groups:
        params = [torch.zeros_like(p).requires_grad_() for p in group["params"] if p.requires_grad]
        for p in params:
            p.grad = torch.zeros_like(p)
        options = {k: v for k, v in group.items() if k != "params"}
        options.update({k: v for k, v in (("fused", False), ("foreach", False)) if k in options})
        groups.append({**options, **flags, "params": params})
    with LaunchCensus(set_aside=False) as census:
        shadow = type(optimizer)(groups, **flags)  # state made here is host or device as on CUDA
        shadow.step()  # the first step also makes the state
        census.sites.clear()
        shadow.step()
    return _labels(census.sites)


def launch_report(
    census: LaunchCensus,
    steps: int,
    dense_autocast: torch.dtype | None = torch.bfloat16,
    dense_compiled: bool = True,
) -> dict:
    """The census per step with the dense network compiled (unless dense_compiled=False: eager, and then
    without autocast's casts) and the optimizer fused, as summary.json's profile reports it (every number a
    prediction)."""
    sites, components = Counter(census.sites), Counter(census.components)
    method = {}
    dense = census.dense
    if census.set_aside["dense"] and not dense_compiled:
        sites.update(census.set_aside["dense"])
        components.update(census.set_aside_components["dense"])
        method["dense"] = {"how": "eager (model.compile off)"}
    elif census.set_aside["dense"]:
        method["dense"] = _replace_dense(census, dense, dense_autocast, sites, components)
        method["dense"]["eager_launches_per_step"] = sum(census.set_aside["dense"].values()) / steps
    if census.set_aside["optimizer"]:
        method["optimizer"] = _replace_optimizer(census, sites, components)
        method["optimizer"]["eager_launches_per_step"] = (
            sum(census.set_aside["optimizer"].values()) / steps
        )
    return {
        "predicted_launches_per_step": sum(sites.values()) / steps,
        "launch_sites": {site: n / steps for site, n in sorted(sites.items())},
        "launch_components": {c: n / steps for c, n in sorted(components.items())},
        "launch_method": method,
    }


def _replace_dense(census, dense, autocast, sites: Counter, components: Counter) -> dict:
    try:
        predicted = predict_compiled_dense(dense, autocast)
    except Exception as e:  # no inductor or no Triton: the eager ops stay
        sites.update(census.set_aside["dense"])
        components.update(census.set_aside_components["dense"])
        return {"how": f"eager (no compiled prediction: {type(e).__name__}: {e})"}
    for part, calls, component in zip(
        PARTS, (dense.forwards, dense.backwards), ("dense_fwd", "dense_bwd"), strict=True
    ):
        for label, n in predicted[part].items():
            sites[f"<compiled dense {part}> {label}"] += n * calls
            components[component] += n * calls
    name = str(autocast).removeprefix("torch.") if autocast is not None else "no"
    return {
        "how": f"torch.compile (inductor, Triton backend generated on CPU), {name} autocast",
        "compiled_launches_per_call": {p: sum(predicted[p].values()) for p in PARTS},
        "graph_breaks": predicted["graph_breaks"],
        "calls": {"forward": dense.forwards, "backward": dense.backwards},
    }


def _replace_optimizer(census, sites: Counter, components: Counter) -> dict:
    optimizer = census.optimizer
    try:
        predicted = predict_cuda_optimizer(optimizer)
    except Exception as e:  # an optimizer without foreach / fused: the eager ops stay
        sites.update(census.set_aside["optimizer"])
        components.update(census.set_aside_components["optimizer"])
        return {"how": f"eager (no fused prediction: {type(e).__name__}: {e})"}
    kind = "fused" if type(optimizer).__name__ in FUSED_ON_CUDA else "foreach"
    for label, n in predicted.items():
        sites[f"<{kind} {type(optimizer).__name__}> {label}"] += n * census.optimizer_steps
        components["dense_optimizer"] += n * census.optimizer_steps
    return {
        "how": f"{type(optimizer).__name__}, {kind} (multi_tensor_apply chunks)",
        "steps": census.optimizer_steps,
    }
