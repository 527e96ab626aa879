"""The rounding contract of the fused update kernel (sparse_update_triton's _update_kernel) against
SparseOptimizer.update_rows, on distinct rows (rows_unique=True: no merge, whose atomics sum
duplicates in any order).

The kernel computes in float32 op by op as the reference does: IEEE round-to-nearest division and
square root, no fused multiply-adds (tests/kernels/test_kernels_compile.py checks the PTX), and
Adam's bias corrections 1 - beta^t in float64 rounded once. So SGD and Adam give the reference's
bits (fp32 storage; bf16 storage too where the kernels are compiled: the interpreter casts to bf16
by truncation). Row-wise Adagrad sums g^2 over the row in another order than torch's mean: its
accumulator and, through it, the step differ by round-off bounded below.
"""

import os

import torch

# torch does not import triton, so this still precedes triton's import when this file runs alone
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from kernels.common_triton import INTERPRETED  # noqa: E402
from kernels.sparse_optimizer import SparseOptimizer  # noqa: E402
from kernels.sparse_update import sparse_update_reference  # noqa: E402
from kernels.sparse_update_triton import sparse_update_triton  # noqa: E402
from tests.support.kernels import DEVICE, needs_triton  # noqa: E402

EPS = torch.finfo(torch.float32).eps
NUM_ROWS = 12
ROWS = [7, 0, 11, 2, 5]
# Adam's step count before the update of each row: bias corrections from t = 1 to t = 10^6
STEPS_BEFORE = [0, 1, 9, 99_999, 999_999]


def run(update, name: str, dim: int, dtype, device, steps: int = 3):
    """Weights and state after `steps` updates of ROWS (distinct) from the same seeded inputs."""
    gen = torch.Generator().manual_seed(dim)
    weight = torch.randn(NUM_ROWS, dim, generator=gen).to(dtype)
    optimizer = SparseOptimizer(name, 0.1)
    state = optimizer.init_state(NUM_ROWS, dim, "cpu")
    rows = torch.tensor(ROWS, dtype=torch.int64)
    if name == "adam":
        state["row_steps"][rows] = torch.tensor(STEPS_BEFORE)
    weight, rows = weight.to(device), rows.to(device)
    state = {k: v.to(device) for k, v in state.items()}
    before = weight.float().cpu()
    for _ in range(steps):
        grads = torch.randn(len(ROWS), dim, generator=gen).to(device)
        update(weight, rows, grads, state, optimizer, rows_unique=True)
    return before, weight.cpu(), {k: v.cpu() for k, v in state.items()}


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dim", [1, 13, 16, 64, 128])
@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_sgd_and_adam_give_the_references_bits(name, dim, dtype):
    if dtype == torch.bfloat16 and INTERPRETED:
        pytest.skip(
            "the interpreter casts fp32 -> bf16 by truncation, GPUs and torch round to nearest"
        )
    _, weight, state = run(sparse_update_triton, name, dim, dtype, DEVICE)
    _, want_weight, want_state = run(sparse_update_reference, name, dim, dtype, "cpu")
    assert torch.equal(weight, want_weight)
    for key in want_state:
        assert torch.equal(state[key], want_state[key]), key


@needs_triton
@pytest.mark.parametrize("dim", [1, 13, 16, 64, 128])
def test_adagrad_to_the_round_off_of_a_row_sum(dim):
    """m1 += sum(g^2) / D: a sum of D non-negative terms in one order is within (D - 1) * EPS / 2 of
    any other order's, relatively; 2 ulps more for the division and the addition to m1, per step.
    The step lr * g / (sqrt(m1) + eps) then moves by half m1's relative error plus 3 ulps (sqrt,
    addition, division), and the weight by that much of the step plus 1 ulp of itself. A step is at
    most lr * sqrt(D) (m1 >= g_j^2 / D for every column j)."""
    steps = 3
    _, weight, state = run(sparse_update_triton, "adagrad", dim, torch.float32, DEVICE, steps)
    _, want, want_state = run(sparse_update_reference, "adagrad", dim, torch.float32, "cpu", steps)
    m1_rel = steps * ((dim - 1) / 2 + 2) * EPS
    m1, want_m1 = state["momentum1"].double(), want_state["momentum1"].double()
    assert ((m1 - want_m1).abs() <= m1_rel * want_m1).all()
    step_bound = 0.1 * dim**0.5
    bound = steps * ((m1_rel / 2 + 3 * EPS) * step_bound + EPS * want.abs().double())
    assert ((weight.double() - want.double()).abs() <= bound).all()


def test_reference_bias_correction_is_rounded_once():
    """The reference computes 1 - beta^t in float64 and rounds once. At t = 1 the first step of Adam
    is then exactly -lr * sign(g) for g = 1 and eps = 0: m1 / bias1 = (1 - b1) / (1 - b1) and
    m2 / bias2 = (1 - b2) / (1 - b2), the same float32 numbers. In float32 arithmetic 1 - 0.999^1
    keeps about 4 correct digits of 0.001, and the step would be off by 6e-6."""
    optimizer = SparseOptimizer("adam", 1.0, eps=0.0)
    weight = torch.zeros(1, 1)
    state = optimizer.init_state(1, 1, "cpu")
    optimizer.update_rows(weight, torch.tensor([0]), torch.ones(1, 1), state)
    assert weight.item() == -1.0
