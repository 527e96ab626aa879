"""The training loop as tests drive it: build a run's parts on one rank of a test process group and train
them with training.loop.train_loop, the loop train.py runs."""

from __future__ import annotations

import torch
import torch.distributed as dist

from training import checkpoint
from training.build import Parts, build
from training.config import Config, load_config
from training.data import SyntheticSource
from training.distributed import DistContext, unwrap
from training.guards import LossGuard
from training.loop import train_loop


def context(rank: int = 0, world_size: int = 1, group=None, device="cpu") -> DistContext:
    return DistContext(rank, world_size, torch.device(device), group)


def build_parts(cfg: Config, rank: int = 0, world_size: int = 1, group=None, device="cpu") -> Parts:
    return build(cfg, context(rank, world_size, group, device))


def load_parts(
    argv: list[str], rank: int = 0, world_size: int = 1, group=None, device="cpu"
) -> tuple[Config, Parts]:
    cfg = load_config(argv)
    return cfg, build_parts(cfg, rank, world_size, group, device)


def global_mean(loss: torch.Tensor, world_size: int) -> float:
    """The mean of every rank's loss (collective when world_size > 1)."""
    loss = loss.clone()
    if world_size > 1:
        dist.all_reduce(loss)
        loss /= world_size
    return float(loss)


def train_losses(
    cfg: Config,
    parts: Parts,
    world_size: int = 1,
    first_step: int = 0,
    batches=None,
    after_step=None,
) -> dict[int, float]:
    """{step: mean loss over ranks} of steps first_step + 1 .. train.steps; after_step(result) runs after each."""
    losses = {}
    for result in train_loop(cfg, parts, first_step, batches=batches):
        losses[result.step] = global_mean(result.loss, world_size)
        if after_step is not None:
            after_step(result)
    return losses


def dense_state(parts: Parts) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in unwrap(parts.model).state_dict().items()}


def host_batches(
    cfg: Config, rank: int = 0, world_size: int = 1, first_step: int = 0, steps: int | None = None
):
    """This rank's synthetic train batches made on the host (the device stream may differ in the last ulp)."""
    source = SyntheticSource(cfg, context(rank, world_size))
    return source.generator.local_batches(
        cfg.train.global_batch_size,
        rank,
        world_size,
        cfg.train.steps if steps is None else steps,
        first_step=first_step,
    )


def train_cases(rank, world_size, group, toml_path, cases, pipelined=None, device="cpu"):
    """Per (placement, sparse optimizer) case: losses, full table state, dense state and the plan."""
    results = {}
    for placement, opt in cases:
        pipelined_case = pipelined if pipelined is not None else opt != "sgd"  # both paths covered
        cfg, parts = load_parts(
            [
                "--config",
                toml_path,
                "--embedding.sharding",
                placement,
                "--optimizer.sparse",
                opt,
                "--train.pipelined",
                str(pipelined_case),
            ],
            rank,
            world_size,
            group,
            device,
        )
        # host-made batches: the device's synthetic stream may differ from the host's in the last ulp
        losses = list(
            train_losses(
                cfg, parts, world_size, batches=host_batches(cfg, rank, world_size)
            ).values()
        )
        plan = {name: p.placement for name, p in parts.plan.placements.items()}
        results[(placement, opt)] = (
            losses,
            parts.embeddings.full_state_dict(),
            dense_state(parts),
            plan,
        )
    return results


def train_with_checkpoints(rank, world_size, group, toml, run_dir, steps, extra=()):
    """train.py's loop without eval/logging: ({step: global loss}, parts)."""
    cfg, parts = load_parts(
        ["--config", toml, "--run.dir", run_dir, "--train.steps", str(steps), *extra],
        rank,
        world_size,
        group,
    )
    env = context(rank, world_size, group)
    ckpt = checkpoint.Checkpointer(cfg, parts, env)
    first = ckpt.restore()
    guard = LossGuard(cfg, env, lambda: ckpt.last_path, first, ckpt.skipped_steps)

    def after_step(result):
        guard.step_done(result.step, result.loss)
        if ckpt.due(result.step):
            guard.check_before_save(parts)
            ckpt.save(result.step, guard.skipped_steps)

    return train_losses(cfg, parts, world_size, first, after_step=after_step), parts
