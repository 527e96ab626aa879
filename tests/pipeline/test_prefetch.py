import gc
import threading
import time
import traceback

import pytest
import torch

from pipeline.batch import Batch, KeyedJagged
from pipeline.prefetch import PrefetchLoader, map_tensors


def _batch(i: int) -> Batch:
    kjt = KeyedJagged(
        torch.arange(i, i + 3, dtype=torch.int64), torch.tensor([0, 1, 3], dtype=torch.int64), ["a"]
    )
    return Batch(dense=torch.full((2, 4), float(i)), labels=torch.tensor([0.0, 1.0]), sparse=kjt)


def _prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "PrefetchLoader"]


@pytest.fixture(autouse=True)
def no_leftover_threads():
    yield
    gc.collect()
    deadline = time.time() + 5
    while _prefetch_threads() and time.time() < deadline:
        time.sleep(0.01)
    assert not _prefetch_threads()


@pytest.mark.parametrize("depth", [1, 2, 5])
def test_every_batch_once_in_order(depth):
    with PrefetchLoader((_batch(i) for i in range(50)), "cpu", depth=depth) as loader:
        got = list(loader)
    assert [int(b.dense[0, 0]) for b in got] == list(range(50))
    assert torch.equal(got[7].sparse.values, torch.tensor([7, 8, 9]))
    assert got[7].sparse.keys == ["a"] and loader.batches == 50
    with pytest.raises(StopIteration):
        next(loader)


def test_slow_consumer_and_producer_timing():
    def slow_source():
        for i in range(4):
            time.sleep(0.05)
            yield _batch(i)

    loader = PrefetchLoader(slow_source(), "cpu")
    next(loader)
    assert loader.data_wait_ms > 20  # the first batch takes the producer's 50 ms
    time.sleep(0.15)  # the producer fills the queue meanwhile
    next(loader)
    assert loader.data_wait_ms < 20
    stats = loader.take_stats()
    assert stats["batches"] == 2 and stats["h2d_ms"] == 0.0
    loader.close()


def test_producer_exception_reaches_consumer_with_traceback():
    def failing_source():
        yield _batch(0)
        yield _batch(1)
        raise KeyError("broken row 17")

    loader = PrefetchLoader(failing_source(), "cpu")
    assert int(next(loader).dense[0, 0]) == 0
    assert int(next(loader).dense[0, 0]) == 1
    with pytest.raises(KeyError, match="broken row 17") as info:
        next(loader)
    text = "".join(traceback.format_exception(info.value))
    assert "failing_source" in text and "producer thread" in text
    with pytest.raises(StopIteration):
        next(loader)


def test_close_mid_stream_stops_thread_and_closes_source():
    closed = threading.Event()

    def endless():
        try:
            i = 0
            while True:
                yield _batch(i)
                i += 1
        finally:
            closed.set()

    loader = PrefetchLoader(endless(), "cpu", depth=3)
    for _ in range(5):
        next(loader)
    assert _prefetch_threads()
    loader.close()
    loader.close()  # idempotent
    assert not _prefetch_threads() and closed.is_set()


def test_dropping_the_loader_stops_the_thread():
    loader = PrefetchLoader((_batch(i) for i in range(1000)), "cpu", depth=2)
    next(loader)
    del loader  # __del__ must run: the thread holds no reference to the loader


def test_map_tensors_keeps_structure():
    tree = {"x": (torch.ones(2), [torch.zeros(1)]), "b": _batch(3), "n": 5}
    out = map_tensors(tree, lambda t: t + 1)
    assert (
        out["n"] == 5 and torch.equal(out["x"][1][0], torch.ones(1)) and isinstance(out["b"], Batch)
    )
    assert torch.equal(out["b"].sparse.values, torch.tensor([4, 5, 6]))


def test_bad_depth():
    with pytest.raises(ValueError):
        PrefetchLoader([], "cpu", depth=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_copies_match_and_reuse_pinned_buffers():
    device = torch.device("cuda")
    batches = [_batch(i) for i in range(20)]
    with PrefetchLoader(iter(batches), device, depth=2) as loader:
        for ref, got in zip(batches, loader, strict=True):
            assert got.dense.device.type == "cuda" and got.sparse.values.device.type == "cuda"
            torch.cuda.current_stream().synchronize()
            assert torch.equal(got.dense.cpu(), ref.dense) and torch.equal(
                got.sparse.values.cpu(), ref.sparse.values
            )
        assert loader.total_h2d_ms >= 0.0


@pytest.mark.parametrize("depth", [1, 3])
def test_transform_runs_in_the_producer_on_the_device_batch(depth):
    seen = []

    def double_ids(batch):
        seen.append(threading.current_thread().name)
        return Batch(
            batch.dense,
            batch.labels,
            KeyedJagged(batch.sparse.values * 2, batch.sparse.offsets, batch.sparse.keys),
        )

    with PrefetchLoader(
        (_batch(i) for i in range(7)), "cpu", depth=depth, transform=double_ids
    ) as loader:
        got = list(loader)
    assert [b.sparse.values.tolist() for b in got] == [
        [2 * i, 2 * i + 2, 2 * i + 4] for i in range(7)
    ]
    assert seen == ["PrefetchLoader"] * 7


def test_batches_already_on_the_device_are_not_copied():
    batches = [_batch(i) for i in range(4)]
    with PrefetchLoader(iter(batches), "cpu") as loader:
        for ref, got in zip(batches, loader, strict=True):
            assert got.dense.data_ptr() == ref.dense.data_ptr()
            assert got.sparse.values.data_ptr() == ref.sparse.values.data_ptr()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_source_runs_on_the_side_stream_and_is_not_copied():
    device = torch.device("cuda")
    made, streams = [], []

    def on_device():
        for i in range(6):
            streams.append(torch.cuda.current_stream(device))
            b = Batch(
                torch.full((2, 4), float(i), device=device),
                torch.zeros(2, device=device),
                KeyedJagged(
                    torch.arange(i, i + 3, device=device),
                    torch.tensor([0, 1, 3], device=device),
                    ["a"],
                ),
            )
            made.append(b.dense.data_ptr())
            yield b

    def plus_one(batch):
        return Batch(batch.dense + 1, batch.labels, batch.sparse)

    main_stream = torch.cuda.current_stream(device)
    with PrefetchLoader(on_device(), device, depth=2) as loader:
        for i, got in enumerate(loader):
            assert got.dense.data_ptr() == made[i]  # delivered as made, no copy
            assert torch.equal(got.dense.cpu(), torch.full((2, 4), float(i)))
    # made on the loader's side stream, not the default one
    assert all(s != main_stream for s in streams)
    with PrefetchLoader(on_device(), device, transform=plus_one) as loader:
        assert [float(b.dense[0, 0]) for b in loader] == [i + 1.0 for i in range(6)]
