"""The segment kernel's write-out mode (pool_backward) against its reference, and what all three
entry points promise: the same bits run to run (no atomics), and no host sync."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import kernels.pool_backward_update_host_triton as segment_host  # noqa: E402
from kernels.common_triton import INTERPRETED  # noqa: E402
from kernels.pool_backward import pool_backward, pool_backward_reference  # noqa: E402
from kernels.pool_backward_update import merge_update, pool_backward_update  # noqa: E402
from kernels.sparse_optimizer import SparseOptimizer  # noqa: E402
from tests.support.kernels import DEVICE, needs_triton, on  # noqa: E402
from training.launch_census import LaunchCensus  # noqa: E402
from training.profiling import HostSyncCensus  # noqa: E402

SMALL_CHUNK = 16
# name: (batch size, bag lengths feature-major [F*B]); F = 2
LAYOUTS = {
    "irregular": (3, [0, 1, 3, 20, 2, 0]),  # empty bags, a one-value bag, a long bag
    "one_value": (1, [1, 0]),
    "all_empty": (2, [0, 0, 0, 0]),
    "hot": (4, [30, 9, 20, 7, 0, 14, 3, 1]),  # one key used > 3 * SMALL_CHUNK times
}
POOLINGS = {"sum": [False, False], "mean": [True, True], "mixed": [True, False]}
USED = torch.tensor([0, 2, 3, 5, 6])  # keys the values use: rows 1, 4, 7 and 8 get no value


@pytest.fixture
def triton_path(monkeypatch):
    """Triton on CPU tensors (the interpreter)."""
    if DEVICE.type == "cpu":
        monkeypatch.setenv("RECFUSE_FORCE_TRITON", "1")


@pytest.fixture
def small_chunk(monkeypatch, triton_path):
    """Blocks of SMALL_CHUNK entries: segments split over blocks at small sizes; the piece list
    built by programs of 2 * SMALL_CHUNK positions: its scan over several of them."""
    monkeypatch.setattr(segment_host, "CHUNK", SMALL_CHUNK)
    monkeypatch.setattr(segment_host, "_BLOCK", 2 * SMALL_CHUNK)


def make_bags(layout, pooling, dim, gen):
    batch_size, lengths = LAYOUTS[layout]
    lengths = torch.tensor(lengths, dtype=torch.int64)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    n = int(lengths.sum())
    inverse = USED[torch.randint(0, USED.numel(), (n,), generator=gen)]
    if layout == "hot":
        inverse = torch.where(torch.rand(n, generator=gen) < 0.7, 3, inverse)
    grad = torch.randn(batch_size, 2, dim, generator=gen)
    return grad, inverse, offsets, torch.tensor(POOLINGS[pooling])


def zipf_rows(n, num_rows, gen):
    """Ids skewed as embedding lookups are: the first rows get most values (row 0 a quarter, and
    at least 3 blocks of values)."""
    rows = (torch.rand(n, generator=gen) ** 3 * num_rows).long()
    rows[: 3 * SMALL_CHUNK + 1] = 0
    return rows


@needs_triton
@pytest.mark.parametrize("dim", [3, 17, 64, 128])
@pytest.mark.parametrize("pooling", list(POOLINGS))
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_pool_backward_matches_reference(layout, pooling, dim, triton_path, monkeypatch):
    if layout == "hot":  # else every segment fits in one block (N < CHUNK): never split
        monkeypatch.setattr(segment_host, "CHUNK", SMALL_CHUNK)
    gen = torch.Generator().manual_seed(dim + len(layout))
    grad, inverse, offsets, mean = make_bags(layout, pooling, dim, gen)
    got = pool_backward(*on(grad, inverse, offsets, mean), 9).cpu()
    want = pool_backward_reference(grad, inverse, offsets, mean, 9)
    assert got.dtype == torch.float32 and got.shape == (9, dim)
    if INTERPRETED and layout != "hot":
        # fp32 sums in value order, as index_add_: the same bits (compiled code may fuse the
        # scale's multiply into the add: round-off)
        assert torch.equal(got, want)
    else:  # a hot key's sum of block sums: round-off
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("dim", [16, 100])
@pytest.mark.parametrize("layout", ["irregular", "hot"])
def test_pool_backward_into_strided_out_with_lookups(layout, dim, dtype, small_chunk):
    """out: the first D columns of a wider buffer, in its dtype; lookups: a bit-cast column of the
    same buffer; scale folded in. Rows no value uses are zeroed, padding columns untouched."""
    gen = torch.Generator().manual_seed(dim)
    grad, inverse, offsets, mean = make_bags(layout, "mixed", dim, gen)
    buffer = torch.full((9, dim + 6), float("nan"), dtype=dtype, device=DEVICE)
    lookups = buffer.view(torch.int32)[:, -1]  # the last 4 bytes of each row
    out = pool_backward(*on(grad, inverse, offsets, mean), 9, 1 / 3, buffer[:, :dim], lookups)
    assert out.data_ptr() == buffer.data_ptr() and out.dtype == dtype
    want = pool_backward_reference(grad, inverse, offsets, mean, 9, 1 / 3)
    # bf16: the interpreter casts by truncation, torch rounds to nearest: 1 bf16 ulp
    tol = {"rtol": 1e-2, "atol": 1e-2} if dtype == torch.bfloat16 else {}
    if layout == "hot" and dtype == torch.float32:
        tol = {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(out.cpu().float(), want.to(dtype).float(), **tol)
    assert torch.equal(lookups.cpu(), torch.bincount(inverse, minlength=9).int())
    assert buffer[:, dim:-2].isnan().all()  # the padding (lookups aside)


@needs_triton
def test_pool_backward_without_values_zeroes_out(triton_path):
    grad, inverse, offsets, mean = make_bags("all_empty", "sum", 5, torch.Generator())
    out = torch.full((4, 5), 7.0, device=DEVICE)
    lookups = torch.full((4,), 7, dtype=torch.int32, device=DEVICE)
    pool_backward(*on(grad, inverse, offsets, mean), 4, out=out, lookups=lookups)
    assert not out.any() and not lookups.any()


def _pooled_update(gen, optimizer, dim):
    """pool_backward_update on Zipf ids: a call that returns the tensors it writes."""
    num_rows, batch_size = 40, 16
    lengths = torch.randint(2, 12, (2 * batch_size,), generator=gen)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    rows = zipf_rows(int(lengths.sum()), num_rows, gen)
    weight = torch.randn(num_rows, dim, generator=gen, device=DEVICE)
    state = optimizer.init_state(num_rows, dim, DEVICE)
    counters = [torch.zeros(num_rows, dtype=torch.int64, device=DEVICE) for _ in range(2)]
    grad = torch.randn(batch_size, 2, dim, generator=gen)
    args = on(rows, offsets, grad, torch.tensor([True, False]))

    def call():
        updated = pool_backward_update(weight, state, *counters, 1, *args, optimizer)
        return [weight, *state.values(), *counters, updated]

    return call


def _merge(gen, optimizer, dim):
    """merge_update of Zipf rows with counts and scales: a call that returns what it writes."""
    num_rows, k = 40, 300
    args = on(
        zipf_rows(k, num_rows, gen),
        torch.randn(k, dim, generator=gen),
        torch.randint(0, 3, (k,), generator=gen),
    )
    scale = on(torch.rand(k, generator=gen))
    weight = torch.randn(num_rows, dim, generator=gen, device=DEVICE)
    state = optimizer.init_state(num_rows, dim, DEVICE)
    counters = [torch.zeros(num_rows, dtype=torch.int64, device=DEVICE) for _ in range(2)]

    def call():
        updated = merge_update(weight, state, *counters, 1, *args, optimizer, scale)
        return [weight, *state.values(), *counters, updated]

    return call


def _pool(gen, optimizer, dim):
    """pool_backward of Zipf keys with lookups and a scale: a call that returns what it writes."""
    batch_size = 16
    lengths = torch.randint(2, 12, (2 * batch_size,), generator=gen)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    inverse = zipf_rows(int(lengths.sum()), 40, gen)
    grad = torch.randn(batch_size, 2, dim, generator=gen)
    args = on(grad, inverse, offsets, torch.tensor([True, False]))
    lookups = torch.empty(40, dtype=torch.int32, device=DEVICE)

    def call():
        return [pool_backward(*args, 40, 0.5, lookups=lookups), lookups]

    return call


ENTRY_POINTS = {"pool_backward_update": _pooled_update, "merge_update": _merge, "pool": _pool}


@needs_triton
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_same_bits_run_to_run(entry, small_chunk):
    """Zipf ids, rows with several blocks of values: each long segment's slots are summed in a
    fixed order, so two runs give the same bits (float atomics would not, on a GPU)."""
    optimizer = SparseOptimizer("adam", 0.1)
    runs = [
        ENTRY_POINTS[entry](torch.Generator().manual_seed(1), optimizer, 24)() for _ in range(2)
    ]
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


@needs_triton
@pytest.mark.skipif(not INTERPRETED, reason="the census predicts a GPU's syncs from a CPU run")
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_no_host_sync(entry, small_chunk):
    """Sized from N, the rows-updated count a device tensor: no call waits for the device."""
    call = ENTRY_POINTS[entry](torch.Generator().manual_seed(2), SparseOptimizer("adagrad", 0.1), 8)
    with HostSyncCensus() as census:
        result = call()
    assert not census.sites, census.sites
    if entry != "pool":
        assert result[-1].dtype == torch.int64 and int(result[-1].sum()) > 0


@needs_triton
def test_pool_backward_of_zero_columns_still_counts_lookups(triton_path):
    grad, inverse, offsets, mean = make_bags("irregular", "mixed", 0, torch.Generator())
    lookups = torch.full((9,), 7, dtype=torch.int32, device=DEVICE)
    out = pool_backward(*on(grad, inverse, offsets, mean), 9, lookups=lookups)
    assert out.shape == (9, 0)
    assert torch.equal(lookups.cpu(), torch.bincount(inverse, minlength=9).int())


def _laid_out(grad, layout):
    """grad [B, F, D], the same values, as a caller may hand it over: a slice of a [B, F+1, D]
    concatenation (the dense network's), or feature-major memory seen as [B, F, D]."""
    batch_size, num_features, dim = grad.shape
    if layout == "slice":
        whole = torch.full((batch_size, num_features + 1, dim), float("nan"))
        whole[:, 1:] = grad
        return whole[:, 1:]
    return grad.transpose(0, 1).contiguous().transpose(0, 1)


def _backward(entry, grad, inverse, offsets, mean):
    """What pool_backward / pool_backward_update write from grad, and the launches they make."""
    if entry == "pool_backward":
        lookups = torch.empty(9, dtype=torch.int32, device=DEVICE)
        with LaunchCensus() as census:
            out = pool_backward(grad, inverse, offsets, mean, 9, 0.5, lookups=lookups)
        return [out, lookups], census.sites
    optimizer = SparseOptimizer("adagrad", 0.1)
    weight = torch.ones(9, grad.shape[2], device=DEVICE)
    state = optimizer.init_state(9, grad.shape[2], DEVICE)
    counters = [torch.zeros(9, dtype=torch.int64, device=DEVICE) for _ in range(2)]
    with LaunchCensus() as census:
        pool_backward_update(weight, state, *counters, 1, inverse, offsets, grad, mean, optimizer)
    return [weight, *state.values(), *counters], census.sites


@needs_triton
@pytest.mark.skipif(not INTERPRETED, reason="the census counts interpreted launches")
@pytest.mark.parametrize("layout", ["slice", "feature_major"])
@pytest.mark.parametrize("entry", ["pool_backward", "pool_backward_update"])
@pytest.mark.parametrize("dim", [3, 16])
def test_strided_pooled_gradient_is_read_in_place(entry, layout, dim, small_chunk):
    """A pooled gradient with batch and feature strides of its own gives the bits its contiguous
    copy gives, and nothing copies it."""
    grad, inverse, offsets, mean = make_bags("hot", "mixed", dim, torch.Generator().manual_seed(4))
    args = on(inverse, offsets, mean.to(torch.int32))
    want, _ = _backward(entry, on(grad), *args)
    strided = on(_laid_out(grad, layout))
    assert not strided.is_contiguous()
    got, sites = _backward(entry, strided, *args)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)
    assert not [s for s in sites if s.endswith((" clone", " _to_copy", " copy_"))], sites
