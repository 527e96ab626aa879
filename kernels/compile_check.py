"""Compile every Triton kernel specialization for real GPU targets, on a machine without a GPU.

    python -m kernels.compile_check                     # sm_90 and sm_80, every launcher's cases
    python -m kernels.compile_check --arch 90 --ptx-dir /tmp/ptx --resources   # keep PTX, check registers/spills

Why: the Triton interpreter (how the kernels are tested on CPU) accepts code the compiler
rejects, e.g. a kernel reading a plain module-level int. ``triton.compile`` runs the whole
pipeline (ttir -> ttgir -> llir -> ptx -> cubin) for a ``GPUTarget`` without a device.

What gets compiled is not a hand-written list: every ``kernels/*_triton.py`` module with
launchers defines ``compile_cases()`` (kernel_modules finds them), which calls its launchers
over the inputs they accept (dtypes, dims and block sizes, world sizes, optimizers, poolings,
sizes equal to 1, unaligned dims). The
launchers run on small CPU tensors with a stand-in Triton driver whose JIT cache hook records
each specialization exactly as Triton's binder derives it from the arguments (signature,
constexprs, divisibility attributes) and skips the launch. The recorded specializations are
then compiled for every target in a process pool; each result carries what ptxas reports
(registers a thread, spill bytes) and what the PTX holds (global loads/stores by vector width,
approximate float instructions and fused multiply-adds). Kernels are never executed here: a pre-run
hook zeroes every tensor a launch is given, so host code reading a kernel's output sees zeros;
that only changes which later launches a launcher makes, and every case is chosen so that all
of its kernels are launched anyway.

Must run in a process where TRITON_INTERPRET is unset (tests run it as a subprocess).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import multiprocessing
import os
import pkgutil
import re
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from tqdm import tqdm

DEFAULT_ARCHES = (90, 80)


def kernel_modules() -> tuple[str, ...]:
    """Every kernels/*_triton.py module that defines compile_cases(), by name (imports them)."""
    names = (
        f"kernels.{m.name}"
        for m in pkgutil.iter_modules([os.path.dirname(__file__)])
        if m.name.endswith("_triton")
    )
    return tuple(n for n in sorted(names) if hasattr(importlib.import_module(n), "compile_cases"))


@dataclass(frozen=True)
class Specialization:
    module: str  # module that defines the kernel
    kernel: str  # kernel function name
    signature: tuple  # ((arg, triton type or "constexpr"), ...)
    constexprs: tuple  # ((arg index path, value), ...)
    attrs: tuple  # ((arg index path, [[attr, value], ...]), ...)
    num_warps: int
    num_stages: int
    enable_fp_fusion: bool = True

    def describe(self) -> str:
        names = [name for name, _ in self.signature]
        consts = ", ".join(f"{names[path[0]]}={value}" for path, value in self.constexprs)
        # the data pointers' element types tell variants apart (index pointers are always int64/int32)
        dtypes = "/".join(
            t[1:]
            for _, t in self.signature
            if t.startswith("*") and t[1:] in ("fp32", "bf16", "fp16")
        )
        return f"{self.kernel}[{consts}]({dtypes})"


class TargetDriver:
    """The parts of a Triton driver that JITFunction.run (and inductor's code generation) touches before
    compiling: a GPU target on a machine without one."""

    def __init__(self, target):
        self.target = target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return self.target

    def get_active_torch_device(self):
        import torch

        return torch.device("cpu")


def record(modules: tuple[str, ...] | None = None) -> list[Specialization]:
    """Run the compile_cases() of modules (default: kernel_modules()) with launches intercepted;
    returns the distinct specializations."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError(
            "kernels.compile_check needs compiled Triton: run it with TRITON_INTERPRET unset"
        )
    import torch
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.runtime.driver import driver
    from triton.runtime.jit import JITFunction

    seen: dict[Specialization, None] = {}

    def hook(*, key, repr, fn, compile, is_manual_warmup, already_compiled):  # noqa: A002 - Triton's keyword names
        jit = fn.jit_function
        spec = Specialization(
            module=jit.fn.__module__,
            kernel=jit.fn.__name__,
            signature=tuple(compile["signature"].items()),
            constexprs=tuple(
                sorted((tuple(k), _plain(v)) for k, v in compile["constants"].items())
            ),
            attrs=tuple(
                sorted(
                    (tuple(k), tuple(tuple(a) for a in v)) for k, v in compile["configs"][0].items()
                )
            ),
            num_warps=compile["num_warps"],
            num_stages=compile["num_stages"],
            enable_fp_fusion=compile["enable_fp_fusion"],
        )
        seen[spec] = None
        return True  # handled: Triton neither compiles nor launches

    # reset_active() would build the real driver, which fails without a GPU: put the old one back as it was
    previous_driver, previous_hook = driver._active, knobs.runtime.jit_cache_hook
    driver.set_active(TargetDriver(GPUTarget("cuda", 90, 32)))
    knobs.runtime.jit_cache_hook = hook

    def zero_tensors(*args, **kwargs):
        # kernels do not run here: their outputs would be uninitialized memory, which the host code after
        # a launch may use as indices; zeros keep every launcher on a valid path
        for value in (*args, *kwargs.values()):
            if isinstance(value, torch.Tensor):
                value.zero_()

    try:
        for name in modules or kernel_modules():
            module = importlib.import_module(name)
            for kernel in vars(module).values():
                if isinstance(kernel, JITFunction) and zero_tensors not in kernel.pre_run_hooks:
                    kernel.add_pre_run_hook(zero_tensors)
            for case in module.compile_cases():
                case()
    finally:
        knobs.runtime.jit_cache_hook = previous_hook
        driver._active = previous_driver
    return list(seen)


def _plain(value):
    return getattr(value, "value", value)


@dataclass
class CompileResult:
    spec: Specialization
    arch: int
    seconds: float
    error: str | None = None
    # global loads/stores in the PTX by width: {"ld.v4": n, ..., "st.scalar": n}
    vector_ops: dict | None = None
    # float32 instructions that round otherwise than torch's op-by-op math: {"div.full.f32": n, ...}
    inexact_ops: dict | None = None
    registers: int | None = None  # ptxas: registers a thread
    spill_bytes: int | None = None  # ptxas: spill stores + spill loads, bytes
    ptx_path: str | None = None


# ld.global[.cache hints][.v2|.v4|.v8].b32 etc.; atomics are red/atom, not counted
_MEMORY_OP = re.compile(r"\b(ld|st)\.global(?:\.[\w:]+?)*?(?:\.(v[248]))?\.[bfsu]\d+\b")


def ptx_memory_ops(ptx: str) -> dict[str, int]:
    """Global loads and stores in PTX by vector width: {"ld.v4": n, "ld.scalar": n, "st.v4": n, ...}."""
    return dict(Counter(f"{m[1]}.{m[2] or 'scalar'}" for m in _MEMORY_OP.finditer(ptx)))


# what nvptx emits for a plain float32 division, sqrt, exp2, log2, 1/x (approximations, not IEEE
# round-to-nearest), and fused multiply-adds (one rounding where torch's CPU ops round twice)
_INEXACT_OP = re.compile(
    r"\b(div\.full\.f32|div\.approx|sqrt\.approx|ex2\.approx|lg2\.approx|rcp\.approx|"
    r"fma\.rn(?:\.ftz)?(?:\.sat)?\.f32)"
)


def ptx_inexact_ops(ptx: str) -> dict[str, int]:
    """Float32 instructions in PTX that round otherwise than torch's op-by-op math, by kind:
    {"div.full.f32": n, "sqrt.approx": n, "fma.rn.f32": n, ...}."""
    return dict(Counter(m[1] for m in _INEXACT_OP.finditer(ptx)))


def ptxas_resources(log: str) -> tuple[int | None, int | None]:
    """(registers, spill stores + spill loads in bytes) from a ptxas -v log; None where absent."""
    registers = spills = None
    if m := re.search(r"Used (\d+) registers", log):
        registers = int(m.group(1))
    if m := re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log):
        spills = int(m.group(1)) + int(m.group(2))
    return registers, spills


def _compile_one(spec: Specialization, arch: int, ptx_dir: str | None) -> CompileResult:
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel = getattr(importlib.import_module(spec.module), spec.kernel)
    started = time.perf_counter()
    result = CompileResult(spec, arch, 0.0)
    log = io.StringIO()
    try:
        # Triton always runs ptxas -v: this only prints its log (registers and spills) to stdout
        knobs.nvidia.dump_ptxas_log = True
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(
                ASTSource(
                    kernel,
                    dict(spec.signature),
                    dict(spec.constexprs),
                    {k: [list(a) for a in v] for k, v in spec.attrs},
                ),
                target=GPUTarget("cuda", arch, 32),
                options={
                    "num_warps": spec.num_warps,
                    "num_stages": spec.num_stages,
                    "enable_fp_fusion": spec.enable_fp_fusion,
                },
            )
    except Exception as e:  # the compiler's own message names the kernel line
        result.error = f"{type(e).__name__}: {e}"
        result.seconds = time.perf_counter() - started
        return result
    result.seconds = time.perf_counter() - started
    ptx = compiled.asm["ptx"]
    result.vector_ops = ptx_memory_ops(ptx)
    result.inexact_ops = ptx_inexact_ops(ptx)
    result.registers, result.spill_bytes = ptxas_resources(log.getvalue())
    if ptx_dir:
        os.makedirs(ptx_dir, exist_ok=True)
        tag = "_".join(f"{v}" for _, v in spec.constexprs)
        digest = abs(hash(spec)) % 10**8
        result.ptx_path = os.path.join(ptx_dir, f"{spec.kernel}_sm{arch}_{tag}_{digest}.ptx")
        with open(result.ptx_path, "w") as f:
            f.write(ptx)
    return result


def compile_all(
    specs: list[Specialization],
    arches=DEFAULT_ARCHES,
    workers: int | None = None,
    ptx_dir: str | None = None,
    progress: bool = True,
) -> list[CompileResult]:
    """Compile every (specialization, arch) in a process pool; failures are returned, not raised."""
    jobs = [(spec, arch) for spec in specs for arch in arches]
    workers = workers or min(len(jobs), os.cpu_count() or 1) or 1
    results = []
    # fresh processes: the parent has the recording driver installed
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_compile_one, spec, arch, ptx_dir) for spec, arch in jobs]
        for f in tqdm(futures, desc="compile", unit="kernel", disable=not progress):
            results.append(f.result())
    return results


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--arch",
        default=",".join(map(str, DEFAULT_ARCHES)),
        help="compute capabilities, e.g. 90,80",
    )
    parser.add_argument("--workers", type=int, default=0, help="compile processes (0 = all cores)")
    parser.add_argument("--ptx-dir", default="", help="write each specialization's PTX here")
    parser.add_argument(
        "--resources",
        action="store_true",
        help="fail when a specialization spills or uses more than MAX_REGISTERS registers",
    )
    parser.add_argument(
        "--module", action="append", help="only these kernel modules (default: all)"
    )
    parser.add_argument("--quiet", action="store_true", help="print failures and the totals only")
    parser.add_argument(
        "--json", default="", help="write one record per compiled (specialization, arch) here"
    )
    return parser


def _print_table(results: list[CompileResult]) -> None:
    """One line per compiled (specialization, arch): time, PTX loads/stores by width, registers."""
    print(
        f"{'kernel specialization':<64} {'sm':>3} {'s':>5} {'ld v4/v2/1':>11} {'st v4/v2/1':>11} "
        f"{'warps':>5} {'regs':>5} {'spill':>5}"
    )
    for r in sorted(results, key=lambda r: (r.spec.describe(), r.arch)):
        if r.error:
            continue
        ops = r.vector_ops
        ld, st = (
            "/".join(str(ops.get(f"{op}.{w}", 0)) for w in ("v4", "v2", "scalar"))
            for op in ("ld", "st")
        )
        regs = "-" if r.registers is None else str(r.registers)
        spill = "-" if r.spill_bytes is None else str(r.spill_bytes)
        warps = r.spec.num_warps
        print(
            f"{r.spec.describe():<64} {r.arch:>3} {r.seconds:>5.2f} {ld:>11} {st:>11} {warps:>5} "
            f"{regs:>5} {spill:>5}"
        )


def _json_record(r: CompileResult) -> dict:
    """One entry of the --json report."""
    names = [name for name, _ in r.spec.signature]
    return {
        "kernel": r.spec.kernel,
        "module": r.spec.module,
        "specialization": r.spec.describe(),
        "constexprs": {names[path[0]]: value for path, value in r.spec.constexprs},
        "arch": r.arch,
        "seconds": r.seconds,
        "error": r.error,
        "num_warps": r.spec.num_warps,
        "memory_ops": r.vector_ops,
        "inexact_ops": r.inexact_ops,
        "registers": r.registers,
        "spill_bytes": r.spill_bytes,
    }


def over_resource_bound(record: dict) -> str | None:
    """Why a compiled --json record breaks the bound every kernel is held to (no spills, at most
    common_triton.MAX_REGISTERS registers a thread), or None."""
    from kernels.common_triton import MAX_REGISTERS

    if record["registers"] is None or record["spill_bytes"] is None:
        return "no ptxas resource report"
    if record["spill_bytes"] or record["registers"] > MAX_REGISTERS:
        return f"{record['registers']} registers, {record['spill_bytes']} spill bytes"
    return None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    arches = [int(a) for a in args.arch.split(",") if a]
    started = time.perf_counter()
    specs = record(tuple(args.module) if args.module else None)
    results = compile_all(
        specs,
        arches,
        args.workers or None,
        args.ptx_dir or None,
        progress=not args.quiet,
    )
    failed = [r for r in results if r.error]
    checked = [r for r in results if args.resources and not r.error]
    over = [(r, why) for r in checked if (why := over_resource_bound(_json_record(r)))]
    for r, why in over:
        print(f"OVER BOUND {r.spec.describe()} sm_{r.arch}: {why}", file=sys.stderr)
    if not args.quiet:
        _print_table(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump([_json_record(r) for r in results], f, indent=1, allow_nan=False)
    for r in failed:
        print(
            f"FAILED {r.spec.module}.{r.spec.describe()} for sm_{r.arch}:\n{r.error}\n",
            file=sys.stderr,
        )
    print(
        f"{len(specs)} specializations x {len(arches)} targets: {len(results) - len(failed)} compiled, "
        f"{len(failed)} failed in {time.perf_counter() - started:.1f} s"
        + (f", {len(over)} over the resource bound" if args.resources else "")
    )
    return 1 if failed or over else 0


if __name__ == "__main__":
    sys.exit(main())
