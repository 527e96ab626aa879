"""Background-thread prefetching with pinned-memory, side-stream host-to-device copies.

    with PrefetchLoader(dataset.train_batches(...), device, depth=cfg.data.prefetch_depth) as loader:
        for batch in loader:           # already on `device`
            ...
            metrics["data_wait_ms"] = loader.data_wait_ms

On CUDA a producer thread copies each host batch into a ring of reused pinned buffers,
starts the H2D copies on a side stream (non_blocking) and records an event. The consumer
makes its current stream wait on that event only when it takes the batch (so the copy
overlaps the previous step's compute) and calls record_stream on the delivered tensors, so
the caching allocator does not hand their memory back to the side stream while the
consumer's stream may still use it. A pinned buffer is refilled only after the event of
its previous copy has completed. On CPU it is plain thread prefetching.

The source is iterated on the side stream too, so a source that makes its batches on the
device (pipeline.synthetic) runs its kernels there, beside the step: its tensors are not
copied again, and the event covers them. ``transform(batch)`` (e.g. pipeline.multihot) runs
in the producer after the copy, on the side stream, on the device batch.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
import warnings
from collections.abc import Callable, Iterable

import torch

_POLL_S = 0.05  # how often blocked queue operations look at the stop flag
_JOIN_TIMEOUT_S = 10.0


def map_tensors(obj, fn: Callable[[torch.Tensor], torch.Tensor]):
    """Apply fn to every tensor in a Batch/KeyedJagged/dataclass/tuple/list/dict tree, rebuilding the containers."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(
            obj,
            **{
                f.name: map_tensors(getattr(obj, f.name), fn)
                for f in dataclasses.fields(obj)
                if f.init
            },
        )
    if isinstance(obj, (list, tuple)):
        mapped = [map_tensors(v, fn) for v in obj]
        return type(obj)(*mapped) if hasattr(obj, "_fields") else type(obj)(mapped)
    if isinstance(obj, dict):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    return obj


def all_tensors(obj) -> list[torch.Tensor]:
    """Every tensor in a Batch/KeyedJagged/dataclass/tuple/list/dict tree (containers left as they are)."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = [getattr(obj, f.name) for f in dataclasses.fields(obj)]
    elif isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in all_tensors(v)]
    return []


class _PinnedSlot:
    """Pinned host buffers for one batch in flight; grown (never shrunk) to the largest tensor seen at each position."""

    def __init__(self):
        self.buffers: list[torch.Tensor] = []
        self.copy_done: torch.cuda.Event | None = None

    def stage(self, index: int, t: torch.Tensor) -> torch.Tensor:
        """A pinned tensor shaped like t holding t's data (the index-th tensor of the batch)."""
        while len(self.buffers) <= index:
            self.buffers.append(torch.empty(0, dtype=t.dtype, pin_memory=True))
        buf = self.buffers[index]
        if buf.dtype != t.dtype or buf.numel() < t.numel():
            buf = torch.empty(
                max(t.numel(), buf.numel() * 5 // 4 if buf.dtype == t.dtype else 0),
                dtype=t.dtype,
                pin_memory=True,
            )
            self.buffers[index] = buf
        host = buf[: t.numel()].view(t.shape)
        host.copy_(t)
        return host


@dataclasses.dataclass
class _Delivery:
    item: object
    ready: torch.cuda.Event | None = None  # H2D copies done (CUDA only)
    started: torch.cuda.Event | None = None


@dataclasses.dataclass
class _Failure:
    error: BaseException


_END = object()


def _put(out: queue.Queue, item, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            out.put(item, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False


def _copy_to_device(
    item, device: torch.device, stream: torch.cuda.Stream, slot: _PinnedSlot, transform
) -> _Delivery:
    if slot.copy_done is not None:
        # its previous batch's copy must finish before the buffers are overwritten
        slot.copy_done.synchronize()
    counter = iter(range(1 << 30))
    started, ready = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def copy(t: torch.Tensor) -> torch.Tensor:
        index = next(counter)
        if t.device.type != "cpu":
            return t.to(device, non_blocking=True)
        src = t if t.is_pinned() else slot.stage(index, t)
        return src.to(device, non_blocking=True)

    with torch.cuda.stream(stream):
        started.record(stream)
        moved = map_tensors(item, copy)
        if transform is not None:
            moved = transform(moved)
        ready.record(stream)
    slot.copy_done = ready
    return _Delivery(moved, ready, started)


def _produce(
    source,
    out: queue.Queue,
    stop: threading.Event,
    device: torch.device,
    stream,
    ring_size: int,
    transform,
) -> None:
    """Thread body. Holds no reference to the PrefetchLoader, so dropping the loader triggers its __del__."""
    ring = [_PinnedSlot() for _ in range(ring_size)] if stream is not None else []
    try:
        if stream is not None:
            torch.cuda.set_device(device)
            # the thread's current stream: a source making batches on the device must not use the default stream
            torch.cuda.set_stream(stream)
        for step, item in enumerate(source):
            if stop.is_set():
                return
            if stream is None:
                moved = map_tensors(item, lambda t: t.to(device))
                delivery = _Delivery(transform(moved) if transform is not None else moved)
            else:
                delivery = _copy_to_device(item, device, stream, ring[step % ring_size], transform)
            if not _put(out, delivery, stop):
                return
        _put(out, _END, stop)
    except BaseException as e:  # noqa: B036 - any failure must reach the consumer, or it would wait forever
        _put(out, _Failure(e), stop)
    finally:
        close = getattr(source, "close", None)
        # generators: run their finally blocks (close files) in the thread that ran them
        if close is not None:
            close()


class PrefetchLoader:
    """Iterate ``iterable`` (of Batch or any tensor tree) with up to ``depth`` batches prepared ahead on ``device``.

    ``transform(batch) -> batch``, if given, runs in the producer thread on each batch once it is
    on ``device`` (on CUDA on the side stream, inside the copy's events).
    Attributes for metrics: ``data_wait_ms`` (how long the consumer blocked for the batch it
    just took), ``h2d_ms`` (GPU time of the most recent copy (+ transform) already finished; copies are
    timed with CUDA events once they complete, so this may trail by a batch or two; 0 on
    CPU), running totals ``total_data_wait_ms`` / ``total_h2d_ms`` and ``batches``.
    An exception raised by the source is re-raised by ``__next__``: the same exception
    object, its traceback still showing where it happened in the producer thread.
    """

    def __init__(
        self,
        iterable: Iterable,
        device: torch.device | str,
        depth: int = 2,
        transform: Callable | None = None,
    ):
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self.device = torch.device(device)
        self.use_cuda = self.device.type == "cuda"
        self.data_wait_ms = 0.0
        self.h2d_ms = 0.0
        self.total_data_wait_ms = 0.0
        self.total_h2d_ms = 0.0
        self.batches = 0
        self._pending_timings: list[_Delivery] = []
        self._finished = False
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        if self.use_cuda and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        stream = torch.cuda.Stream(self.device) if self.use_cuda else None
        # ring: `depth` batches queued, one being filled, one spare so a refill rarely waits on a copy
        self._thread = threading.Thread(
            target=_produce,
            name="PrefetchLoader",
            daemon=True,
            args=(
                iter(iterable),
                self._queue,
                self._stop,
                self.device,
                stream,
                depth + 2,
                transform,
            ),
        )
        self._thread.start()

    def __iter__(self) -> PrefetchLoader:
        return self

    def __next__(self):
        if self._finished:
            raise StopIteration
        started = time.perf_counter()
        while True:
            try:
                delivery = self._queue.get(timeout=_POLL_S)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    self._finished = True
                    raise RuntimeError(
                        "PrefetchLoader producer thread ended without a result (closed?)"
                    ) from None
        if delivery is _END or isinstance(delivery, _Failure):
            self._finished = True
            self.close()
            if delivery is _END:
                raise StopIteration
            error = delivery.error
            error.add_note(
                "(raised in the PrefetchLoader producer thread while preparing the next batch)"
            )
            raise error
        if delivery.ready is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(delivery.ready)
            for t in all_tensors(delivery.item):
                if t.device.type == "cuda":
                    t.record_stream(current)
            self._pending_timings.append(delivery)
            self._collect_timings()
        self.data_wait_ms = (time.perf_counter() - started) * 1000.0
        self.total_data_wait_ms += self.data_wait_ms
        self.batches += 1
        return delivery.item

    def _collect_timings(self) -> None:
        """Read the copy times of finished copies (elapsed_time needs both events complete; query() never blocks)."""
        while self._pending_timings and self._pending_timings[0].ready.query():
            d = self._pending_timings.pop(0)
            self.h2d_ms = d.started.elapsed_time(d.ready)
            self.total_h2d_ms += self.h2d_ms

    def take_stats(self) -> dict[str, float]:
        """Mean data wait / H2D ms per batch since the last call, and the batch count; resets the totals."""
        n = max(self.batches, 1)
        stats = {
            "data_wait_ms": self.total_data_wait_ms / n,
            "h2d_ms": self.total_h2d_ms / n,
            "batches": self.batches,
        }
        self.total_data_wait_ms = self.total_h2d_ms = 0.0
        self.batches = 0
        return stats

    def close(self) -> None:
        """Stop the producer thread and wait for it (idempotent)."""
        thread = getattr(self, "_thread", None)
        if thread is None:
            return
        self._stop.set()
        while True:  # free queue slots so a producer blocked in put() notices the stop flag
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if thread is not threading.current_thread():
            thread.join(_JOIN_TIMEOUT_S)
            if thread.is_alive():
                warnings.warn(
                    "PrefetchLoader: the source iterator did not return within "
                    f"{_JOIN_TIMEOUT_S:.0f} s of close(); its (daemon) thread is left running",
                    stacklevel=2,
                )
        self._finished = True

    def __enter__(self) -> PrefetchLoader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
