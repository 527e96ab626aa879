"""Every Triton kernel specialization compiles for sm_90 and sm_80 on a machine without a GPU.

The interpreter (how tests/kernels/test_kernels_triton.py runs the kernels on CPU) accepts code the
compiler rejects; kernels.compile_check runs the real compiler for GPU targets. It needs a
process where TRITON_INTERPRET is unset, so it runs as a subprocess, on a cold cache (ptxas then
reports every specialization's registers and spills), started in the background when the session starts
(tests/support/compile_report.py; these tests run last), and its --json report is checked here:
vector widths, the register and spill bound, IEEE float math where a kernel promises bits.
"""

import json
import os
import shutil
import subprocess

import pytest
import torch

from kernels.compile_check import over_resource_bound, ptx_inexact_ops
from tests.support import compile_report
from tests.support.paths import ROOT

pytest.importorskip("triton")

from kernels.common_triton import BLOCK_DS, MAX_REGISTERS  # noqa: E402


def run_compile_check(tmp_path, *args):
    argv, env = compile_report.compile_check_command(str(tmp_path), *args)
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def compiled(compile_check_started):
    """The --json report of every specialization: from the check tests/conftest.py started at collection's
    end (tests/support/compile_report.py), else from one started here."""
    started = compile_check_started or compile_report.start(low_priority=False)
    try:
        returncode, out, err = started.wait(timeout=900)
        assert returncode == 0, out[-2000:] + err[-6000:]
        with open(started.report) as f:
            return json.load(f)
    finally:
        if compile_check_started is None:
            shutil.rmtree(started.dir, ignore_errors=True)


def test_every_specialization_compiles_for_sm90_and_sm80(compiled):
    assert {r["arch"] for r in compiled} == {90, 80}
    assert not [r for r in compiled if r["error"]]
    kernels = {r["kernel"] for r in compiled}
    assert {
        "_lookup_kernel",
        "_gather_pool_kernel",
        "_pool_backward_kernel",
        "_update_kernel",
        "_merge_kernel",
    } <= kernels
    # both targets build the same set of specializations
    by_arch = {
        arch: sorted(r["specialization"] for r in compiled if r["arch"] == arch)
        for arch in (90, 80)
    }
    assert by_arch[90] == by_arch[80] and len(by_arch[90]) >= 20


def test_aligned_rows_use_16_byte_vectors(compiled):
    """ALIGN=8 (every usual dim) must give 16-byte vectors in every column class and dtype: fp32 rows
    4 columns a thread, bf16/fp16 rows 8, loads and stores alike. ALIGN=1 rows can only be read
    element by element."""
    for kernel in ("_lookup_kernel", "_gather_pool_kernel", "_update_kernel", "_merge_kernel"):
        records = [r for r in compiled if r["kernel"] == kernel]
        assert {r["constexprs"]["BLOCK_D"] for r in records} == set(BLOCK_DS), kernel
        for r in records:
            ops, align = r["memory_ops"], r["constexprs"]["ALIGN"]
            vector = ops.get("ld.v4", 0) + ops.get("ld.v2", 0)
            assert (vector > 0) == (align == 8), r["specialization"]
            if align == 8:
                assert ops.get("ld.v4", 0) > 0, r["specialization"]
                if kernel != "_merge_kernel":  # the merge writes with atomics
                    assert ops.get("st.v4", 0) > 0, r["specialization"]


def serves_dims_up_to_128(record) -> bool:
    """Whether a specialization runs for some row width D <= 128.

    D is never part of a specialization: every launcher passes it as a runtime argument (``dim``,
    not value-specialized). What a specialization fixes is its column block, the BLOCK_D constexpr
    (common_triton.column_block(D), one of BLOCK_DS): a BLOCK_D <= 128 serves the D that
    column_block maps to it, all <= BLOCK_D (the 128 class also serves wider rows, block by block,
    in the same registers). Kernels without BLOCK_D (unique_partition, hash_table) do not depend
    on D at all. So today every specialization serves some D <= 128; the filter keeps the bound's
    scope explicit should a wider class ever be added."""
    return record["constexprs"].get("BLOCK_D", 0) <= 128


def resource_failures(compiled) -> list[str]:
    return [
        f"{r['specialization']} sm_{r['arch']}: {why}"
        for r in compiled
        if serves_dims_up_to_128(r) and (why := over_resource_bound(r))
    ]


def test_no_spills_and_at_most_128_registers(compiled):
    """ptxas on a cold cache (kernels.compile_check reads its -v log): no specialization spills, and
    each uses at most common_triton.MAX_REGISTERS registers a thread where it serves D <= 128."""
    assert MAX_REGISTERS == 128
    assert all(r["registers"] is not None for r in compiled), "warm cache: no ptxas report"
    assert not resource_failures(compiled)


def test_kernels_promising_the_references_bits_use_ieee_float_math(compiled):
    """The kernels documented as bit-exact against their torch reference (docs/kernels.md) compile
    to no approximate division / sqrt / exp2 and no fused multiply-add of float32 (torch rounds
    each product); the others (atomics, fused updates) are checked to fp32 round-off instead."""
    exact = ("_lookup_kernel", "_gather_pool_kernel", "_update_kernel")
    records = [r for r in compiled if r["kernel"] in exact]
    assert {r["kernel"] for r in records} == set(exact)
    assert not [(r["specialization"], r["inexact_ops"]) for r in records if r["inexact_ops"]]


def test_inexact_ops_are_found_in_ptx():
    """What nvptx emits for a plain fp32 x / y, sqrt, exp2 and a contracted a * b + c; not the
    round-to-nearest forms (div.rn, sqrt.rn) nor float64 fused multiply-adds."""
    ptx = """
    div.full.f32 %r3, %r1, %r2;
    sqrt.approx.ftz.f32 %r4, %r3;
    ex2.approx.f32 %r5, %r4;
    fma.rn.f32 %r6, %r5, %r4, %r3;
    div.rn.f32 %r7, %r1, %r2;
    sqrt.rn.f32 %r8, %r7;
    fma.rn.f64 %rd3, %rd1, %rd2, %rd1;
    """
    assert ptx_inexact_ops(ptx) == {
        "div.full.f32": 1,
        "sqrt.approx": 1,
        "ex2.approx": 1,
        "fma.rn.f32": 1,
    }


def test_check_catches_code_only_the_interpreter_accepts(tmp_path):
    proc = run_compile_check(tmp_path, "--module", "tests.support.interpreter_only_kernel")
    assert proc.returncode == 1
    assert "Cannot access global variable _SCALE" in proc.stderr
    assert "1 specializations x 2 targets: 0 compiled, 2 failed" in proc.stdout
    # the very same kernel runs fine under the interpreter
    if os.environ.get("TRITON_INTERPRET") == "1":
        from tests.support.interpreter_only_kernel import scale

        assert torch.equal(scale(torch.ones(100)), torch.full((100,), 3.0))
