"""The stages of a training step and their timer (metrics.jsonl and summary.json "stage_ms")."""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch

# The stages of one training step, in step order; metrics.jsonl "stage_ms" and summary.json "stage_ms" use
# these names (per-step milliseconds); bench/scaling.py and bench/report.py read them.
#   data_wait      the train loop blocked on the prefetch loader for the batch (host wall clock)
#   h2d            host-to-device copy of the batch (+ its multi-hot expansion); on GPU on a side stream, overlapped
#   input_dist     dedup + group ids by owner, id counts and id all-to-all, waiting for the ids to arrive
#                  (runs one batch ahead when the train pipeline is on)
#   lookup         owners read the requested rows (ShardedEmbeddingCollection.compute)
#   output_dist    rows all-to-all back to the requesters, pooling into [B, F, D]
#   dense_fwd      dense network forward and loss
#   dense_bwd      loss.backward() minus the two sparse stages below; with DDP the all-reduce of dense
#                  gradients overlaps it and its exposed part is counted here
#   grad_dist      sparse backward, exchange: pooling backward, gradient all-to-all to the owners, merging
#                  across senders, all-reduce of replicated tables' gradients
#   sparse_update  sparse backward, update: the fused in-place sparse optimizer and access statistics
#   dense_optimizer  the dense optimizer step
STAGES = (
    "data_wait",
    "h2d",
    "input_dist",
    "lookup",
    "output_dist",
    "dense_fwd",
    "dense_bwd",
    "grad_dist",
    "sparse_update",
    "dense_optimizer",
)
# stages holding the embedding exchanges at W > 1 (at W = 1 only their local work: dedup, pooling, merging)
EXCHANGE_STAGES = ("input_dist", "output_dist", "grad_dist")
# stages whose time runs beside the step rather than in it (on GPU; 0 on CPU)
OVERLAPPED_STAGES = ("h2d",)
# stages timed around others: their time is reported with the inner stages' time taken out
NESTED_STAGES = {"dense_bwd": ("grad_dist", "sparse_update")}


class StageTimer:
    """Milliseconds per named stage of a step: CUDA events on GPU (no sync in the step), wall clock on CPU.

    A stage in ``nested`` (name -> inner stage names) is timed around its inner stages; collect()
    reports it without them, so stages never overlap and their sum is the step."""

    def __init__(self, device: torch.device, nested: dict[str, tuple[str, ...]] | None = None):
        self.cuda = device.type == "cuda"
        self.nested = NESTED_STAGES if nested is None else nested
        self._events: list[tuple[str, object, object]] = []
        self._totals: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self._events.append((name, start, end))
        else:
            t0 = time.perf_counter()
            yield
            self._totals[name] = self._totals.get(name, 0.0) + (time.perf_counter() - t0) * 1e3

    def add(self, name: str, ms: float) -> None:
        self._totals[name] = self._totals.get(name, 0.0) + ms

    def collect(self) -> dict[str, float]:
        """Totals since the last collect (synchronizes CUDA events), then reset."""
        for name, start, end in self._events:
            end.synchronize()
            self._totals[name] = self._totals.get(name, 0.0) + start.elapsed_time(end)
        totals, self._events, self._totals = self._totals, [], {}
        for outer, inner in self.nested.items():
            if outer in totals:
                totals[outer] -= sum(totals.get(name, 0.0) for name in inner)
        return totals
