"""Train pipeline: batch i+1's id exchange (input_dist) runs while batch i is computed.

Like TorchRec's TrainPipelineSparseDist, without FX tracing: the embedding module exposes
input_dist explicitly. input_dist moves ids only, never rows, so running it one batch early
(before batch i's backward updates the tables) gives exactly the same results as running it
just in time: the rows are looked up later, in compute, after the update.

The step calls ``start_next()`` once its forward is queued (the loop passes it as train_step's
after_forward); a step that does not (a skipped step) gets it at the next iteration. On CUDA,
with ``stream`` given, input_dist runs on that side stream: its one host sync (the split sizes)
then waits for input_dist's own kernels only, while the device runs batch i's forward. The
batch's stream waits on an event before batch i+1 uses the result.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch

from pipeline.prefetch import all_tensors

_PENDING = object()  # batch i+1's input_dist is not started yet


class SparseDistPipeline:
    """Iterate (batch, sparse_dist); with pipelined=True the next batch's input_dist is in flight
    (started by start_next(), on ``stream`` when one is given)."""

    def __init__(
        self,
        batches: Iterable,
        input_dist: Callable,
        pipelined: bool = True,
        stream: torch.cuda.Stream | None = None,
    ):
        self.batches = batches
        self.input_dist = input_dist
        self.pipelined = pipelined
        self.stream = stream if pipelined else None
        self._it: Iterator | None = None
        self._next = None

    def __iter__(self) -> Iterator:
        self._it = iter(self.batches)
        if not self.pipelined:
            for batch in self._it:
                yield batch, self.input_dist(batch.sparse)
            return
        self._next = _PENDING
        self.start_next()
        while self._next is not None:
            batch, dist, ready = self._next
            self._next = _PENDING
            if ready is not None:  # the step's stream waits for the side stream's input_dist
                torch.cuda.current_stream().wait_event(ready)
            yield batch, dist
            self.start_next()  # no-op when the step started it

    def start_next(self) -> None:
        """Fetch the next batch and start its input_dist (once per batch; later calls do nothing)."""
        if self._next is not _PENDING:
            return
        self._next = None
        if self.stream is None:
            batch = next(self._it, None)
            if batch is not None:
                self._next = (batch, self.input_dist(batch.sparse), None)
            return
        main = torch.cuda.current_stream()
        # fetched on the side stream: the loader makes it wait for the batch's host-to-device copy
        with torch.cuda.stream(self.stream):
            batch = next(self._it, None)
            if batch is None:
                return
            dist = self.input_dist(batch.sparse)
            ready = torch.cuda.Event()
            ready.record(self.stream)
        # made on the side stream, used on the main one: the allocator must not reuse their memory
        # until the main stream is done with them too
        for t in all_tensors((batch, dist)):
            if t.is_cuda:
                t.record_stream(main)
        self._next = (batch, dist, ready)


def side_stream(device: torch.device, pipelined: bool):
    """The stream input_dist runs on: a new CUDA stream when pipelined on CUDA, else None."""
    if not (pipelined and device.type == "cuda"):
        return None
    return torch.cuda.Stream(device)
