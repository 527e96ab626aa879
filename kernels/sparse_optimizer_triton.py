"""Triton side of kernels.sparse_optimizer: the optimizers' row math, for both fused update kernels.

sparse_update_triton's ``_update_kernel`` (a block of rows) and the kernels of
pool_backward_update_triton (one row per program) call the same helpers:

- ``row_factors``: per-row factors, before any column moves: row-wise Adagrad's accumulator and
  denominator, lazy Adam's step count and bias corrections.
- ``update_columns``: one step on some columns of the rows, given their fp32 gradient.

The optimizer is a runtime kernel argument (``SGD``, ``ADAGRAD``, ``ADAM``), not a constexpr:
one compiled variant serves all three (the branch is uniform per program and the kernels are
memory-bound), which keeps the number of variants kernels.compile_check must build small.
Kernels take the optimizer and its hyper-parameters as the scalars of ``kernel_args``, in order.
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
    exp2(t * log2(beta)), with no pow.
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
    Adam: steps[row] += 1; bias = 1 - beta^t. Factors an optimizer does not use stay 1.
    """
    denom = tl.full(row.shape, 1.0, tl.float32)
    bias1 = tl.full(row.shape, 1.0, tl.float32)
    bias2 = tl.full(row.shape, 1.0, tl.float32)
    if optimizer == ADAGRAD:
        acc = tl.load(m1_ptr + row, mask=mask, other=0.0) + sq / dim
        tl.store(m1_ptr + row, acc, mask=mask)
        denom = tl.sqrt(acc) + eps
    elif optimizer == ADAM:
        t = tl.load(steps_ptr + row, mask=mask, other=0) + 1
        tl.store(steps_ptr + row, t, mask=mask)
        tf = t.to(tl.float32)
        bias1 = 1.0 - tl.exp2(tf * log2_beta1)
        bias2 = 1.0 - tl.exp2(tf * log2_beta2)
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
        w = w - lr * g / denom
    else:
        m1 = beta1 * tl.load(m1_ptr + s_base + d, mask=mask, other=0.0) + one_minus_beta1 * g
        m2 = beta2 * tl.load(m2_ptr + s_base + d, mask=mask, other=0.0) + one_minus_beta2 * g * g
        tl.store(m1_ptr + s_base + d, m1, mask=mask)
        tl.store(m2_ptr + s_base + d, m2, mask=mask)
        w = w - lr * (m1 / bias1) / (tl.sqrt(m2 / bias2) + eps)
    tl.store(weight_ptr + w_base + d, w.to(weight_ptr.dtype.element_ty), mask=mask)
