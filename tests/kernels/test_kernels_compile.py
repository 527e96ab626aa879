"""Every Triton kernel specialization compiles for sm_90 and sm_80 on a machine without a GPU.

The interpreter (how tests/kernels/test_kernels_triton.py runs the kernels on CPU) accepts code the
compiler rejects; kernels.compile_check runs the real compiler for GPU targets. It needs a
process where TRITON_INTERPRET is unset, so it runs as a subprocess.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.support.paths import ROOT

pytest.importorskip("triton")


def run_compile_check(tmp_path, *args):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # compile for real, not from an earlier run's cache
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton_cache")
    return subprocess.run(
        [sys.executable, "-m", "kernels.compile_check", "--quiet", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compile")
    proc = run_compile_check(tmp, "--json", str(tmp / "report.json"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-6000:]
    return json.load(open(tmp / "report.json"))


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


def test_aligned_rows_use_vector_loads(compiled):
    """ALIGN=8 (every usual dim) must give vector loads; fp32 rows of the 128-column class move as
    16-byte vectors. ALIGN=1 rows can only be read element by element."""
    for kernel in ("_lookup_kernel", "_gather_pool_kernel", "_update_kernel"):
        for r in (r for r in compiled if r["kernel"] == kernel):
            ops, align = r["memory_ops"], r["constexprs"]["ALIGN"]
            vector = ops.get("ld.v4", 0) + ops.get("ld.v2", 0)
            assert (vector > 0) == (align == 8), r["specialization"]
            if align == 8 and r["constexprs"]["BLOCK_D"] == 128 and "(fp32" in r["specialization"]:
                assert ops.get("ld.v4", 0) > 0, r["specialization"]


def test_check_catches_code_only_the_interpreter_accepts(tmp_path):
    proc = run_compile_check(tmp_path, "--module", "tests.support.interpreter_only_kernel")
    assert proc.returncode == 1
    assert "Cannot access global variable _SCALE" in proc.stderr
    assert "1 specializations x 2 targets: 0 compiled, 2 failed" in proc.stdout
    # the very same kernel runs fine under the interpreter
    if os.environ.get("TRITON_INTERPRET") == "1":
        from tests.support.interpreter_only_kernel import scale

        assert torch.equal(scale(torch.ones(100)), torch.full((100,), 3.0))
