"""Triton side of kernels.sparse_optimizer: the optimizers' row math, for both fused update kernels.

sparse_update_triton's ``_update_kernel`` (a block of rows) and the kernels of
pool_backward_update_triton (one row per program) call the same helpers:

- ``row_factors``: per-row factors, before any column moves: row-wise Adagrad's accumulator and
  denominator, lazy Adam's step count and bias corrections.
- ``update_columns``: one step on some columns of the rows, given their fp32 gradient.

The optimizer is a ``tl.constexpr`` of the kernels (``SGD``, ``ADAGRAD``, ``ADAM``): one compiled
variant per optimizer holds only that optimizer's registers (one variant for all three needed
Adam's registers for SGD too, and spilled). Kernels take the optimizer id (``kernel_args(o)[0]``)
as that constexpr and the hyper-parameters, ``kernel_args(o)[1:]``, as scalars, in order. The
helpers also accept the id as a runtime scalar (a uniform branch per program).

Rounding. Division and square root are IEEE round-to-nearest (``tl.sqrt_rn``, and
``tl.fdiv(..., ieee_rounding=True)``: ``tl.div_rn`` that broadcasts); plain ``/`` and ``tl.sqrt``
compile to approximations on NVIDIA GPUs (div.full.f32, sqrt.approx.f32). Adam's bias corrections
1 - beta^t are computed in float64 (the float32 ``exp2`` is an approximation, and 1 - beta^t
cancels most of its digits at small t) and rounded once: the reference's float32 when log2(beta)
comes as a float64 argument, within one float32 ulp of it from a float32 one. A kernel launched
with ``enable_fp_fusion=False`` also rounds every product as torch does (no fused multiply-adds):
sparse_update_triton's then gives the reference's bits for SGD and Adam; row-wise Adagrad's row
sum of g^2 runs in another order than torch's mean (docs/kernels.md "Exactness",
tests/kernels/test_optimizer_rounding.py).
"""

import math

import triton
import triton.language as tl

OPTIMIZER_IDS = {"sgd": 0, "adagrad": 1, "adam": 2}  # the kernels' optimizer argument
# Globals read inside a kernel must be tl.constexpr (kernels/unique_partition_triton.py says why)
SGD = tl.constexpr(OPTIMIZER_IDS["sgd"])
ADAGRAD = tl.constexpr(OPTIMIZER_IDS["adagrad"])
ADAM = tl.constexpr(OPTIMIZER_IDS["adam"])


def kernel_args(optimizer) -> tuple:
    """The kernel arguments of a kernels.sparse_optimizer.SparseOptimizer: (optimizer id, lr, eps,
    beta1, beta2, 1 - beta1, 1 - beta2, log2(beta1), log2(beta2)).

    1 - beta is rounded once on the host in float64; log2(beta) lets a kernel compute beta^t as
    exp2(t * log2(beta)) (in float64: row_factors), with no pow.
    """
    o = optimizer
    log2_beta1 = math.log2(o.beta1) if o.beta1 > 0 else -math.inf
    log2_beta2 = math.log2(o.beta2) if o.beta2 > 0 else -math.inf
    return (
        OPTIMIZER_IDS[o.name],
        o.lr,
        o.eps,
        o.beta1,
        o.beta2,
        1.0 - o.beta1,
        1.0 - o.beta2,
        log2_beta1,
        log2_beta2,
    )


@triton.jit
def row_factors(row, sq, dim, m1_ptr, steps_ptr, optimizer, eps, log2_beta1, log2_beta2, mask):
    """(denom, bias1, bias2) of rows ``row``, a scalar or a block (``mask``: the real ones).

    Adagrad: m1[row] += sq / dim (sq: sum of g^2 over the whole row); denom = sqrt(m1[row]) + eps.
    Adam: steps[row] += 1; bias = 1 - beta^t, from exp2 in float64 (log2_beta: a float64 or float32
    scalar; float32's rounding moves the bias by up to about one float32 ulp). Factors an optimizer
    does not use stay 1.
    """
    denom = tl.full(row.shape, 1.0, tl.float32)
    bias1 = tl.full(row.shape, 1.0, tl.float32)
    bias2 = tl.full(row.shape, 1.0, tl.float32)
    if optimizer == ADAGRAD:
        acc = tl.load(m1_ptr + row, mask=mask, other=0.0) + tl.fdiv(
            sq, dim.to(tl.float32), ieee_rounding=True
        )
        tl.store(m1_ptr + row, acc, mask=mask)
        denom = tl.sqrt_rn(acc) + eps
    elif optimizer == ADAM:
        t = tl.load(steps_ptr + row, mask=mask, other=0) + 1
        tl.store(steps_ptr + row, t, mask=mask)
        tf = t.to(tl.float64)
        bias1 = (1.0 - tl.exp2(tf * log2_beta1)).to(tl.float32)
        bias2 = (1.0 - tl.exp2(tf * log2_beta2)).to(tl.float32)
    return denom, bias1, bias2


@triton.jit
def update_columns(
    weight_ptr,
    w_base,
    m1_ptr,
    m2_ptr,
    s_base,
    d,
    mask,
    g,
    optimizer,
    lr,
    eps,
    beta1,
    beta2,
    one_minus_beta1,
    one_minus_beta2,
    denom,
    bias1,
    bias2,
):
    """One optimizer step on columns d of the rows at w_base in weight (s_base in Adam's moments),
    given their gradient g: fp32 math, weights stored back in their dtype. The row offsets, d and
    row_factors' factors broadcast to g's shape: [BLOCK_D] for one row; [:, None] and [None, :]
    for a block of rows."""
    w = tl.load(weight_ptr + w_base + d, mask=mask, other=0.0).to(tl.float32)
    if optimizer == SGD:
        w = w - lr * g
    elif optimizer == ADAGRAD:
        w = w - tl.fdiv(lr * g, denom, ieee_rounding=True)
    else:
        m1 = beta1 * tl.load(m1_ptr + s_base + d, mask=mask, other=0.0) + one_minus_beta1 * g
        m2 = beta2 * tl.load(m2_ptr + s_base + d, mask=mask, other=0.0) + one_minus_beta2 * g * g
        tl.store(m1_ptr + s_base + d, m1, mask=mask)
        tl.store(m2_ptr + s_base + d, m2, mask=mask)
        m1_hat = tl.fdiv(m1, bias1, ieee_rounding=True)
        v_root = tl.sqrt_rn(tl.fdiv(m2, bias2, ieee_rounding=True)) + eps
        w = w - tl.fdiv(lr * m1_hat, v_root, ieee_rounding=True)
    tl.store(weight_ptr + w_base + d, w.to(weight_ptr.dtype.element_ty), mask=mask)
