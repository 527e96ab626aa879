"""The segment kernel's optimizer modes against their references: the fused W = 1 backward
(pool_backward_update: pool_backward + sparse_update + freq / last_step) and the owner's merge
(merge_update: received rows summed per row, then one step)."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import kernels.pool_backward_update_host_triton as segment_host  # noqa: E402
from kernels.pool_backward_update import (  # noqa: E402
    merge_update,
    merge_update_reference,
    pool_backward_update,
    pool_backward_update_reference,
)
from kernels.sparse_optimizer import SparseOptimizer  # noqa: E402
from tests.support.kernels import DEVICE, needs_triton  # noqa: E402
from training.launch_census import LaunchCensus  # noqa: E402

# name: (batch size, bag lengths feature-major [F*B], rows, id pattern); F = 2
CASES = {
    # empty bags, a one-value bag, a long bag, duplicates in a bag
    "irregular": (3, [0, 1, 3, 20, 2, 0], 9, "random"),
    "one_value": (1, [1, 0], 4, "random"),
    "all_empty": (2, [0, 0, 0, 0], 5, "random"),
    # one row read more than CHUNK times (CHUNK is 16 in these tests): split over several blocks
    "hot_row": (4, [30, 9, 20, 7, 0, 14, 3, 1], 12, "hot"),
}
SMALL_CHUNK = 16


@pytest.fixture
def triton_path(monkeypatch):
    """Triton on CPU tensors (the interpreter), with blocks of SMALL_CHUNK entries: long segments
    at small sizes; the piece list built by programs of 2 * SMALL_CHUNK positions."""
    if DEVICE.type == "cpu":
        monkeypatch.setenv("RECFUSE_FORCE_TRITON", "1")
    monkeypatch.setattr(segment_host, "CHUNK", SMALL_CHUNK)
    monkeypatch.setattr(segment_host, "_BLOCK", 2 * SMALL_CHUNK)


def make_case(name, dim, dtype, gen):
    batch_size, lengths, rows, pattern = CASES[name]
    lengths = torch.tensor(lengths, dtype=torch.int64)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    n = int(lengths.sum())
    value_rows = torch.randint(0, rows, (n,), generator=gen, dtype=torch.int64)
    if pattern == "hot":
        value_rows = torch.where(torch.rand(n, generator=gen) < 0.6, 5, value_rows)
    weight = torch.randn(rows, dim, generator=gen).to(dtype)
    grad = torch.randn(batch_size, 2, dim, generator=gen)
    return weight, value_rows, offsets, grad


def run_pooled(update, device, name, dim, dtype, optimizer, mean):
    gen = torch.Generator().manual_seed(dim * 13 + len(name))
    weight, value_rows, offsets, grad = make_case(name, dim, dtype, gen)
    feature_mean = torch.tensor([mean, False])
    rows = weight.shape[0]
    weight = weight.to(device)
    state = SparseOptimizer(optimizer).init_state(rows, dim, device)
    freq = torch.arange(rows, dtype=torch.int64, device=device)
    last = torch.zeros(rows, dtype=torch.int64, device=device)
    updated = []
    # the second step runs on non-zero state (adagrad accumulators, adam step counts)
    for step in (1, 2):
        updated.append(
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
        )
    state = {k: v.cpu() for k, v in state.items()}
    return weight.cpu(), state, freq.cpu(), last.cpu(), [u.cpu() for u in updated]


def assert_same(got, want, dtype, split: bool):
    """Weights and state to round-off (split: a hot row's sum of partial sums), counters exact."""
    # bf16 / fp16 storage: the interpreter casts by truncation, the reference rounds to nearest
    tol = {} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    if split and dtype == torch.float32:
        # the reference sums a hot row's gradients one after another, the kernel block by block
        tol = {"rtol": 1e-4, "atol": 2e-3}
    torch.testing.assert_close(got[0].float(), want[0].float(), **tol)
    state_tol = {"rtol": 1e-4, "atol": 2e-3} if split else {}
    for key in want[1]:
        torch.testing.assert_close(got[1][key], want[1][key], msg=key, **state_tol)
    assert torch.equal(got[2], want[2]) and torch.equal(got[3], want[3])
    for u, v in zip(got[4], want[4], strict=True):  # counts whose sum is the rows updated
        assert u.dtype == torch.int64 and v.dim() == 0 and torch.equal(u.sum(), v)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dim", [3, 17, 200])  # 200: two column blocks
@pytest.mark.parametrize("optimizer", ["sgd", "adagrad", "adam"])
@pytest.mark.parametrize("name", list(CASES))
def test_fused_update_matches_pool_backward_then_sparse_update(
    name, optimizer, dim, dtype, triton_path
):
    mean = name != "one_value"  # one mean and one sum feature; one_value: both sum
    got = run_pooled(pool_backward_update, DEVICE, name, dim, dtype, optimizer, mean)
    want = run_pooled(pool_backward_update_reference, "cpu", name, dim, dtype, optimizer, mean)
    assert_same(got, want, dtype, split=name == "hot_row")


def make_received(num_rows, k, dim, gen, hot=False):
    """Gradient rows an owner received: rows with duplicates (some > SMALL_CHUNK times when hot),
    counts with zeros (row 1: all of its counts are 0), a scale per row."""
    rows = torch.randint(0, num_rows, (k,), generator=gen)
    if hot:
        rows = torch.where(torch.rand(k, generator=gen) < 0.5, 3, rows)
    counts = torch.randint(0, 3, (k,), generator=gen, dtype=torch.int32)
    counts[rows == 1] = 0
    grads = torch.randn(k, dim, generator=gen)
    scale = torch.rand(k, generator=gen) + 0.5
    return rows, grads, counts, scale


def run_merge(update, device, received, weight, optimizer, with_scale):
    rows, grads, counts, scale = received
    num_rows, dim = weight.shape
    weight = weight.clone().to(device)
    state = SparseOptimizer(optimizer).init_state(num_rows, dim, device)
    freq = torch.arange(num_rows, dtype=torch.int64, device=device)
    last = torch.zeros(num_rows, dtype=torch.int64, device=device)
    updated = [
        update(
            weight,
            state,
            freq,
            last,
            step,
            rows.to(device),
            (grads * step).to(device),
            counts.to(device),
            SparseOptimizer(optimizer, 0.1),
            scale.to(device) if with_scale else None,
        )
        for step in (1, 2)
    ]
    state = {k: v.cpu() for k, v in state.items()}
    return weight.cpu(), state, freq.cpu(), last.cpu(), [u.cpu() for u in updated]


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("dim", [16, 100])
@pytest.mark.parametrize("optimizer", ["sgd", "adagrad", "adam"])
@pytest.mark.parametrize("hot", [False, True])
def test_merge_update_matches_reference(hot, optimizer, dim, dtype, triton_path):
    gen = torch.Generator().manual_seed(dim + hot)
    received = make_received(10, 40 if hot else 25, dim, gen, hot)
    weight = torch.randn(10, dim, generator=gen).to(dtype)
    for with_scale in (False, True):
        got = run_merge(merge_update, DEVICE, received, weight, optimizer, with_scale)
        want = run_merge(merge_update_reference, "cpu", received, weight, optimizer, with_scale)
        assert_same(got, want, dtype, split=hot)


@needs_triton
@pytest.mark.parametrize("optimizer", ["adagrad", "adam"])
def test_merge_update_leaves_rows_nobody_looked_up(optimizer, triton_path):
    """Rows received only with count 0 (replicated rows appended by every rank): weight, state,
    freq and last_step unchanged, not counted; the others stepped once."""
    gen = torch.Generator().manual_seed(3)
    rows = torch.tensor([4, 1, 4, 6, 1, 2, 6], dtype=torch.int64)
    counts = torch.tensor([1, 0, 2, 0, 0, 1, 0], dtype=torch.int32)
    grads = torch.randn(7, 8, generator=gen)
    weight = torch.randn(8, 8, generator=gen)
    got = run_merge(merge_update, DEVICE, (rows, grads, counts, None), weight, optimizer, False)
    untouched = torch.tensor([1, 6])
    assert torch.equal(got[0][untouched], weight[untouched])
    assert torch.equal(got[2][untouched], untouched) and not got[3][untouched].any()
    for value in got[1].values():
        assert not value[untouched].any()
    assert torch.equal(got[2][[2, 4]], torch.tensor([2 + 2, 4 + 2 * 3]))  # 2 steps' counts
    assert torch.equal(got[3][[2, 4]], torch.tensor([2, 2]))
    assert [int(u.sum()) for u in got[4]] == [2, 2]


def test_reference_touches_only_looked_up_rows():
    gen = torch.Generator().manual_seed(0)
    weight, value_rows, offsets, grad = make_case("irregular", 4, torch.float32, gen)
    before = weight.clone()
    state = SparseOptimizer("adam").init_state(9, 4, "cpu")
    freq, last = torch.zeros(9, dtype=torch.int64), torch.zeros(9, dtype=torch.int64)
    mean = torch.tensor([True, False])
    updated = pool_backward_update_reference(
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
    assert updated.dim() == 0 and int(updated) == int(touched.sum())


@needs_triton
def test_hot_row_gradient_is_accurate(triton_path):
    """A row read 60% of the time (split over many blocks, summed from its slots) gets the float64
    sum of its values' gradients to fp32 round-off; SGD with lr 1 from zero weights exposes the
    gradient itself."""
    gen = torch.Generator().manual_seed(5)
    _, value_rows, offsets, grad = make_case("hot_row", 4, torch.float32, gen)
    mean = torch.tensor([True, False])
    batch_size, num_rows = grad.shape[0], 12
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
    assert int((value_rows == 5).sum()) > 3 * SMALL_CHUNK  # the hot row spans several blocks
    torch.testing.assert_close(-w.cpu().double(), exact, rtol=1e-5, atol=1e-5)
    assert torch.equal(freq.cpu(), torch.bincount(value_rows, minlength=num_rows))


@needs_triton
@pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1", reason="the census counts interpreted launches"
)
@pytest.mark.parametrize("merge", [False, True])
def test_rows_updated_are_few_counts_summed_by_no_launch(merge, triton_path):
    """The count of rows updated is read at log steps only: the call leaves it as per-program
    counts (the second pass's, the first pass's added in: at most one per block of entries)."""
    gen = torch.Generator().manual_seed(7)
    weight, value_rows, offsets, grad = make_case("hot_row", 8, torch.float32, gen)
    state = SparseOptimizer("adagrad").init_state(12, 8, "cpu")
    mean = torch.tensor([True, False])
    counters = [torch.zeros(12, dtype=torch.int64) for _ in range(2)]
    optimizer = SparseOptimizer("adagrad", 0.1)
    n = value_rows.numel()
    with LaunchCensus() as census:
        if merge:
            ones = torch.ones(n, dtype=torch.int32)
            grads = torch.randn(n, 8, generator=gen)
            args = (value_rows, grads, ones, optimizer)
            updated = merge_update(weight, state, *counters, 1, *args)
        else:
            args = (value_rows, offsets, grad, mean, optimizer)
            updated = pool_backward_update(weight, state, *counters, 1, *args)
    assert n > 3 * SMALL_CHUNK  # both passes
    assert not [s for s in census.sites if s.endswith(" sum")], census.sites
    few = -(-n // SMALL_CHUNK)
    assert updated.dtype == torch.int64 and updated.numel() <= few
    assert updated.untyped_storage().nbytes() <= 8 * few  # keeps no larger buffer alive
    assert int(updated.sum()) == value_rows.unique().numel()
