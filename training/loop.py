"""The training loop: one step (sparse forward, dense forward, loss, backward with the in-place sparse
update, dense optimizer step), and the loop over a run's batches that train.py and the tests share."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch

from pipeline.batch import Batch, dense_as
from pipeline.prefetch import PrefetchLoader
from pipeline.train_pipeline import SparseDistPipeline, side_stream
from training.build import Parts
from training.config import Config
from training.lr_schedule import apply_lr
from training.profiling import StepProfiler
from training.stages import StageTimer

# before_backward(loss) -> (loss, skip): the last point where a step can be dropped (training.guards.LossGuard)
BeforeBackward = Callable[[torch.Tensor], tuple[torch.Tensor, bool]]


@dataclass
class StepResult:
    step: int  # 1-based global step
    # this rank's mean loss, detached and not synchronized (no host sync per step)
    loss: torch.Tensor
    dense_lr: float  # the learning rates the step used
    sparse_lr: float


@functools.cache
def _one(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """backward()'s seed gradient, made once: loss.backward() fills a new one every step (a launch)."""
    return torch.ones((), device=device, dtype=dtype)


def train_step(
    parts: Parts,
    batch,
    sparse_dist,
    timer: StageTimer,
    before_backward: BeforeBackward | None = None,
    after_forward: Callable[[], None] | None = None,
) -> torch.Tensor:
    """One step on the local batch; returns the local mean loss. The embeddings time their own stages
    (lookup, output_dist, grad_dist, sparse_update) into the timer. after_forward() runs once the
    forward is queued (the pipeline starts the next batch's input_dist there, overlapping this step)."""
    pooled = parts.embeddings(sparse_dist)
    with timer.stage("dense_fwd"), parts.autocast:
        loss = parts.step_loss(batch.dense, pooled, batch.labels, batch.weights)
    if after_forward is not None:
        after_forward()
    if before_backward is not None:
        loss, skip = before_backward(loss)
        if skip:  # no dense and no sparse update from this batch
            return loss.detach()
    # the timer takes the embeddings' grad_dist + sparse_update out of it
    with timer.stage("dense_bwd"):
        parts.optimizer.zero_grad(set_to_none=True)
        loss.backward(_one(loss.device, loss.dtype))
    with timer.stage("dense_optimizer"):
        parts.optimizer.step()
    return loss.detach()


def train_loop(
    cfg: Config,
    parts: Parts,
    first_step: int = 0,
    timer: StageTimer | None = None,
    before_backward: BeforeBackward | None = None,
    profiler: StepProfiler | None = None,
    batches: Iterable[Batch] | None = None,
) -> Iterator[StepResult]:
    """Train steps first_step + 1 .. train.steps on parts.data's batches (or the given host batches, this rank's
    slices of steps first_step + 1, ...), yielding each step's result.

    The next batch's input_dist runs once this step's forward is queued (train.pipelined: on CUDA on a
    side stream, so the id exchange overlaps the step); the learning rates are set for every step before
    its backward, which applies the sparse update."""
    if batches is None:
        batches = parts.data.train_batches(first_step, parts.dense_dtype)
    else:
        batches = PrefetchLoader(
            dense_as(batches, parts.dense_dtype),
            next(parts.model.parameters()).device,
            depth=cfg.data.prefetch_depth,
        )
    timer = timer or StageTimer(next(parts.model.parameters()).device)
    parts.embeddings.timer = timer
    emb = parts.embeddings
    # dynamic tables' input_dist reads and grows their hash index: it stays on the step's stream
    stream = None if emb.dynamic else side_stream(emb.weight.device, cfg.train.pipelined)
    pipeline = SparseDistPipeline(batches, emb.input_dist, cfg.train.pipelined, stream)
    # the id range check reads its device-side flag at log steps (the error names the step)
    emb.ids.defer(first_step)
    try:
        for step, (batch, sparse_dist) in enumerate(pipeline, start=first_step + 1):
            if profiler is not None:
                profiler.before_step(step)
            # next() also ran the upcoming batch's input_dist (timed by the embeddings): only the loader's wait is
            # data wait
            timer.add("data_wait", batches.data_wait_ms)
            # side-stream copy time, overlapped with compute on GPU
            timer.add("h2d", batches.h2d_ms)
            dense_lr, sparse_lr = apply_lr(step, cfg, parts.optimizer, parts.embeddings)
            loss = train_step(
                parts, batch, sparse_dist, timer, before_backward, pipeline.start_next
            )
            if step % cfg.run.log_every == 0 or step == cfg.train.steps:
                emb.raise_bad_ids()
            if profiler is not None:
                profiler.after_step(step)
            yield StepResult(step, loss, dense_lr, sparse_lr)
    finally:
        batches.close()
        emb.ids.deferred = False  # batches checked outside this loop raise at once
