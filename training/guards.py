"""What protects a run from bad steps: the non-finite loss policy, and the test-only fault injections.

A NaN/inf loss stops training naming the step and the last good checkpoint, or, with
train.skip_nonfinite_loss, the step is skipped on every rank. Checking costs no host sync per step: the
first bad step is kept on the device and read at log steps and before every checkpoint.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

import torch
import torch.distributed as dist

from training.config import Config
from training.distributed import DistContext, restart_count
from training.finite import first_nonfinite

_NEVER = 2**62  # a step no run reaches


class NonFiniteLoss(FloatingPointError):
    pass


class LossGuard:
    """The non-finite loss policy: before_backward() in every step, check_window() with the all-reduced losses
    at log steps, step_done() after every step, check_before_save() before a checkpoint is written."""

    def __init__(
        self,
        cfg: Config,
        env: DistContext,
        last_checkpoint: Callable[[], str | None],
        first_step: int = 0,
        skipped_steps: int = 0,
    ):
        self.cfg, self.env, self.last_checkpoint = cfg, env, last_checkpoint
        # steps skipped for a non-finite loss (train.skip_nonfinite_loss)
        self.skipped_steps = skipped_steps
        self.steps_done = first_step
        # (step, local loss) of the steps no check has read yet: checking each step would cost a launch or
        # a host sync; they are read at log steps (check_window) and before a save (check_before_save)
        self._unchecked: list[tuple[int, torch.Tensor]] = []
        self._consecutive_skips = (
            0  # skipped steps since the last applied one (train.max_skipped_steps)
        )

    def _raise(self, step: int, skipped: str = "") -> None:
        where = self.last_checkpoint() or "none (nothing saved yet)"
        if skipped:
            raise NonFiniteLoss(
                f"loss is NaN/inf at step {step}, {skipped}; training stopped, last good checkpoint: "
                f"{where} (a learning rate too high, or bad data: see the steps logged as skipped)"
            )
        raise NonFiniteLoss(
            f"loss is NaN/inf at step {step}; training stopped, last good checkpoint: {where} "
            "(train.skip_nonfinite_loss=true skips such steps instead)"
        )

    def before_backward(self, loss: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """(loss, skip): called between the loss and backward. With train.skip_nonfinite_loss, skip is True on
        every rank when the loss is NaN/inf on any rank (one all-reduce of a flag and one host sync per step);
        the sparse update runs inside backward, so this is the last point where a step can still be dropped.
        Also the fault injection train.inject_nan_loss_step / inject_nan_loss_rank."""
        t, step = self.cfg.train, self.steps_done + 1
        if t.inject_nan_loss_step == step and t.inject_nan_loss_rank == self.env.rank:
            loss = loss * float("nan")
        if not t.skip_nonfinite_loss:
            return loss, False
        bad = (~torch.isfinite(loss.detach())).to(torch.int32).reshape(1)
        if self.env.world_size > 1:
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        if not bool(bad):  # the skip decision: every rank must know it before backward
            self._consecutive_skips = 0
            return loss, False
        self.skipped_steps += 1
        self._consecutive_skips += 1
        if t.max_skipped_steps and self._consecutive_skips > t.max_skipped_steps:
            self._raise(
                step,
                f"{self._consecutive_skips} steps in a row (train.max_skipped_steps={t.max_skipped_steps})",
            )
        self.env.log(
            f"step {step}: loss is NaN/inf on a rank; step skipped on every rank "
            f"(train.skip_nonfinite_loss), {self.skipped_steps} skipped so far"
        )
        return loss, True

    def check_window(self, losses: torch.Tensor, step: int) -> torch.Tensor:
        """losses: the all-reduced per-step losses of the window ending at step (same on every rank).
        Returns the losses of the steps that were applied (skipped steps' losses are NaN/inf)."""
        finite = torch.isfinite(losses)
        if self.cfg.train.skip_nonfinite_loss:
            return losses[finite]
        bad = (~finite).nonzero()
        if bad.numel():
            self._raise(step - losses.numel() + 1 + int(bad[0]))
        self._unchecked = [(s, loss) for s, loss in self._unchecked if s > step]
        return losses

    def step_done(self, step: int, loss: torch.Tensor) -> None:
        """Keep the step's loss for the next check (no device work), then the fault injections of this step."""
        self.steps_done = step
        # skipped steps changed nothing: their loss is no reason to stop
        if not self.cfg.train.skip_nonfinite_loss:
            self._unchecked.append((step, loss))
        inject_fault(self.cfg, self.env.rank, step)

    def check_before_save(self, parts=None) -> None:
        """Collective: never write weights that a non-finite loss has touched, nor weights that are not
        finite (parts: the run's, checked when given)."""
        first_bad = torch.tensor(_NEVER, dtype=torch.int64)
        if self._unchecked:
            steps = torch.tensor([s for s, _ in self._unchecked], dtype=torch.int64)
            # one host read per save: the first unchecked step whose local loss is not finite
            finite = torch.isfinite(torch.stack([loss for _, loss in self._unchecked])).cpu()
            first_bad = torch.where(finite, _NEVER, steps).min()
        if self.env.world_size > 1:
            first_bad = first_bad.to(self.env.device)
            dist.all_reduce(first_bad, op=dist.ReduceOp.MIN)
        if int(first_bad) != _NEVER:
            self._raise(int(first_bad))
        self._unchecked.clear()
        bad = first_nonfinite(parts) if parts is not None else None
        if bad is not None:
            where = self.last_checkpoint() or "none (nothing saved yet)"
            raise NonFiniteLoss(
                f"step {self.steps_done}: {bad} holds NaN/inf; no checkpoint written, training stopped, "
                f"last good checkpoint: {where}"
            )


def inject_fault(cfg: Config, rank: int, step: int) -> None:
    """Test-only faults after `step`, on the first torchrun attempt: train.fail_at_step (rank exits
    abruptly) and train.hang_at_step (rank stops entering collectives: the others must time out)."""
    t = cfg.train
    if restart_count() > 0:
        return
    if t.fail_at_step == step and t.fail_rank == rank:
        print(f"rank {rank}: injected failure at step {step} (train.fail_at_step)", flush=True)
        os._exit(1)
    if t.hang_at_step == step and t.hang_rank == rank:
        # one write with its newline: other ranks' lines share the pipe
        sys.stdout.write(
            f"rank {rank}: injected hang at step {step} (train.hang_at_step), pid {os.getpid()}\n"
        )
        sys.stdout.flush()
        time.sleep(max(100 * t.timeout_s, 600))
        os._exit(1)


def fail_point(cfg: Config, rank: int, name: str) -> None:
    """Test-only fault at a named moment of checkpointing (train.fail_at, rank train.fail_rank), on the
    first torchrun attempt: the rank exits abruptly, as a killed process would."""
    t = cfg.train
    if t.fail_at == name and t.fail_rank == rank and restart_count() == 0:
        print(f"rank {rank}: injected failure at {name} (train.fail_at)", flush=True)
        os._exit(1)
