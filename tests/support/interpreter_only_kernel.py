"""A kernel the Triton interpreter runs but the compiler rejects (a plain module-level int read inside
@triton.jit), the bug that broke the first GPU run. tests/kernels/test_kernels_compile.py checks that
kernels.compile_check catches it."""

import torch
import triton
import triton.language as tl

_SCALE = 3  # not tl.constexpr: the interpreter reads it, the compiler refuses it


@triton.jit
def _scale_kernel(x_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(x_ptr + offs, tl.load(x_ptr + offs, mask=mask) * _SCALE, mask=mask)


def scale(x: torch.Tensor) -> torch.Tensor:
    _scale_kernel[(triton.cdiv(x.numel(), 64),)](x, x.numel(), BLOCK=64)
    return x


def compile_cases():
    yield lambda: scale(torch.ones(100))
