"""The fused pooling backward + sparse optimizer (W = 1) against pool_backward + sparse_update (the reference)."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from kernels.pool_backward_update import pool_backward_update, pool_backward_update_reference  # noqa: E402
from kernels.sparse_optimizer import SparseOptimizer  # noqa: E402
from tests.support.kernels import DEVICE, needs_triton  # noqa: E402

# name: (batch size, bag lengths feature-major [F*B], rows, id pattern); F = 2
CASES = {
    # empty bags, a one-value bag, a long bag, duplicates in a bag
    "irregular": (3, [0, 1, 3, 20, 2, 0], 9, "random"),
    "one_value": (1, [1, 0], 4, "random"),
    "all_empty": (2, [0, 0, 0, 0], 5, "random"),
    # one row read more than CHUNK (256) times
    "hot_row": (4, [150, 90, 200, 7, 0, 40, 3, 1], 12, "hot"),
}


def make_case(name, dim, dtype, optimizer, gen):
    batch_size, lengths, rows, pattern = CASES[name]
    lengths = torch.tensor(lengths, dtype=torch.int64)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    n = int(lengths.sum())
    value_rows = torch.randint(0, rows, (n,), generator=gen, dtype=torch.int64)
    if pattern == "hot":
        value_rows = torch.where(torch.rand(n, generator=gen) < 0.7, 5, value_rows)
    weight = torch.randn(rows, dim, generator=gen).to(dtype)
    grad = torch.randn(batch_size, 2, dim, generator=gen)
    return weight, value_rows, offsets, grad, torch.tensor([True, False])


def run(update, device, name, dim, dtype, optimizer, mean):
    gen = torch.Generator().manual_seed(dim * 13 + len(name))
    weight, value_rows, offsets, grad, feature_mean = make_case(name, dim, dtype, optimizer, gen)
    if not mean:
        feature_mean = torch.tensor([False, False])
    rows = weight.shape[0]
    weight = weight.to(device)
    state = SparseOptimizer(optimizer).init_state(rows, dim, device)
    freq = torch.arange(rows, dtype=torch.int64, device=device)
    last = torch.zeros(rows, dtype=torch.int64, device=device)
    # the second step runs on non-zero state (adagrad accumulators, adam step counts)
    for step in (1, 2):
        update(
            weight,
            state,
            freq,
            last,
            step,
            value_rows.to(device),
            offsets.to(device),
            (grad * step).to(device),
            feature_mean.to(device),
            SparseOptimizer(optimizer, 0.1),
        )
    return weight.cpu(), {k: v.cpu() for k, v in state.items()}, freq.cpu(), last.cpu()


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dim", [1, 17, 200])  # 200: two column blocks
@pytest.mark.parametrize("optimizer", ["sgd", "adagrad", "adam"])
@pytest.mark.parametrize("name", list(CASES))
def test_fused_update_matches_pool_backward_then_sparse_update(
    name, optimizer, dim, dtype, monkeypatch
):
    mean = name != "one_value"  # one mean and one sum feature; one_value: both sum
    if DEVICE.type == "cpu":
        monkeypatch.setenv("RECFUSE_FORCE_TRITON", "1")
    got = run(pool_backward_update, DEVICE, name, dim, dtype, optimizer, mean)
    want = run(pool_backward_update_reference, "cpu", name, dim, dtype, optimizer, mean)
    # bf16 storage: the interpreter casts by truncation, the reference rounds to nearest
    # fp32: round-off (sum order)
    tol = {"rtol": 2e-2, "atol": 2e-2} if dtype == torch.bfloat16 else {}
    if name == "hot_row" and dtype == torch.float32:
        # the reference sums a hot row's ~370 gradients one after another in fp32 (index_add_): measured 6e-4 off
        # the float64 sum, the kernel's blockwise sums 3e-5 (test_hot_row_gradient_is_accurate)
        tol = {"rtol": 1e-4, "atol": 2e-3}
    torch.testing.assert_close(got[0].float(), want[0].float(), **tol)
    state_tol = {"rtol": 1e-4, "atol": 2e-3} if name == "hot_row" else {}
    for key in want[1]:
        torch.testing.assert_close(got[1][key], want[1][key], msg=key, **state_tol)
    # lookup counts and last-update steps
    assert torch.equal(got[2], want[2]) and torch.equal(got[3], want[3])


def test_reference_touches_only_looked_up_rows():
    gen = torch.Generator().manual_seed(0)
    weight, value_rows, offsets, grad, mean = make_case("irregular", 4, torch.float32, "adam", gen)
    before = weight.clone()
    state = SparseOptimizer("adam").init_state(9, 4, "cpu")
    freq, last = torch.zeros(9, dtype=torch.int64), torch.zeros(9, dtype=torch.int64)
    pool_backward_update_reference(
        weight, state, freq, last, 7, value_rows, offsets, grad, mean, SparseOptimizer("adam", 0.1)
    )
    touched = torch.zeros(9, dtype=torch.bool)
    touched[value_rows] = True
    assert torch.equal(weight[~touched], before[~touched]) and bool(
        (weight[touched] != before[touched]).all()
    )
    assert torch.equal(freq, torch.bincount(value_rows, minlength=9))
    assert torch.equal(last, torch.where(touched, 7, 0)) and torch.equal(
        state["row_steps"], touched.long()
    )


@needs_triton
def test_hot_row_gradient_is_accurate(monkeypatch):
    """A row read 373 times (long segment: split in chunks, atomics, _long_update_kernel) gets the float64 sum of
    its values' gradients to fp32 round-off; SGD with lr 1 from zero weights exposes the gradient itself."""
    if DEVICE.type == "cpu":
        monkeypatch.setenv("RECFUSE_FORCE_TRITON", "1")
    gen = torch.Generator().manual_seed(5)
    weight, value_rows, offsets, grad, _ = make_case("hot_row", 4, torch.float32, "sgd", gen)
    mean = torch.tensor([True, False])
    batch_size, num_rows = grad.shape[0], weight.shape[0]
    exact = torch.zeros(num_rows, 4, dtype=torch.float64)
    lengths = offsets[1:] - offsets[:-1]
    for v, bag in enumerate(
        torch.repeat_interleave(torch.arange(lengths.numel()), lengths).tolist()
    ):
        f, b = divmod(bag, batch_size)
        exact[value_rows[v]] += grad[b, f].double() / (int(lengths[bag]) if mean[f] else 1)
    w = torch.zeros(num_rows, 4, device=DEVICE)
    freq, last = (torch.zeros(num_rows, dtype=torch.int64, device=DEVICE) for _ in range(2))
    pool_backward_update(
        w,
        {},
        freq,
        last,
        1,
        value_rows.to(DEVICE),
        offsets.to(DEVICE),
        grad.to(DEVICE),
        mean.to(DEVICE),
        SparseOptimizer("sgd", 1.0),
    )
    assert int((value_rows == 5).sum()) > 256  # the long-segment path ran
    torch.testing.assert_close(-w.cpu().double(), exact, rtol=1e-5, atol=1e-4)
    assert torch.equal(freq.cpu(), torch.bincount(value_rows, minlength=num_rows)) and bool(
        (last.cpu() == 1).any()
    )
