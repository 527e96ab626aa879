"""Train pipeline: starts batch i+1's id exchange (input_dist) before batch i is computed.

Like TorchRec's TrainPipelineSparseDist, without FX tracing: the embedding module exposes
input_dist explicitly. input_dist moves ids only, never rows, so running it one batch early
(before batch i's backward updates the tables) gives exactly the same results as running it
just in time: the rows are looked up later, in compute, after the update.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator


class SparseDistPipeline:
    """Iterate (batch, sparse_dist); with pipelined=True the next batch's input_dist is in flight."""

    def __init__(self, batches: Iterable, input_dist: Callable, pipelined: bool = True):
        self.batches = batches
        self.input_dist = input_dist
        self.pipelined = pipelined

    def __iter__(self) -> Iterator:
        it = iter(self.batches)
        if not self.pipelined:
            for batch in it:
                yield batch, self.input_dist(batch.sparse)
            return
        upcoming = next(it, None)
        upcoming_dist = self.input_dist(upcoming.sparse) if upcoming is not None else None
        while upcoming is not None:
            batch, dist = upcoming, upcoming_dist
            upcoming = next(it, None)
            upcoming_dist = self.input_dist(upcoming.sparse) if upcoming is not None else None
            yield batch, dist
