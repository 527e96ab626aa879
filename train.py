"""RecFuse training entry point: config -> build -> train/eval loop -> report.

    # CPU or GPU, one machine, N processes (gloo on CPU, nccl on GPUs, picked automatically)
    torchrun --standalone --nproc_per_node=2 train.py --config configs/tiny.toml
    # any config key can be overridden: --section.key value  or  --section.key=value
    torchrun --standalone --nproc_per_node=4 train.py --config configs/tiny.toml --run.dir /tmp/x --train.steps 50
    # single process without torchrun
    python train.py --config configs/tiny.toml
    # every config key with its type, default and documentation
    python train.py --help

Writes <run.dir>/metrics.jsonl (one line per log step) and <run.dir>/summary.json; docs/design.md follows one
step through the code.
"""

from __future__ import annotations

import os
import sys

import torch

from training.build import build
from training.checkpoint import Checkpointer
from training.cli import one_line_errors, print_help_if_asked
from training.config import Config, load_config
from training.config.validate import check_runnable
from training.digest import optimizer_digest, weights_digest
from training.distributed import explain_timeouts, setup_distributed, shutdown
from training.evaluate import evaluate
from training.export import export_embeddings
from training.guards import LossGuard, fail_point
from training.loop import train_loop
from training.metrics import RunMetrics
from training.model_export import export_model
from training.run_lock import hold_run_dir, refuse_other_runs_output, released_run_dir_locks
from training.warm_start import resume_or_warm_start


def main(argv: list[str] | None = None) -> dict:
    """The command line: --help prints every key; a config or dataset error prints one line
    (`error: ...`, rank 0) and exits 2 before anything is written; other errors keep their traceback."""
    argv = sys.argv[1:] if argv is None else argv
    print_help_if_asked(argv, __doc__)
    with one_line_errors():
        cfg = load_config(argv)
        check_runnable(cfg, int(os.environ.get("WORLD_SIZE", 1)))
        with explain_timeouts(cfg), released_run_dir_locks():
            return run(cfg)


def run(cfg: Config) -> dict:
    env = setup_distributed(cfg)  # rank, world size, device, process groups
    hold_run_dir(cfg, env)  # one run per run.dir: a second one is refused before writing there
    torch.manual_seed(cfg.run.seed)
    # data source, tables, plan, sharded embeddings, dense model (DDP), optimizer
    parts = build(cfg, env)
    refuse_other_runs_output(cfg, env)  # a new run must not mix its output with another config's
    ckpt = Checkpointer(cfg, parts, env)
    first_step, warm = resume_or_warm_start(cfg, parts, env, ckpt)
    guard = LossGuard(cfg, env, lambda: ckpt.last_path, first_step, ckpt.skipped_steps)
    metrics = RunMetrics(cfg, parts, env, guard, first_step)
    env.log(f"world_size={env.world_size} device={env.device}\n{parts.plan.format(parts.tables)}")

    step = first_step
    for result in train_loop(
        cfg, parts, first_step, metrics.timer, guard.before_backward, metrics.profiler
    ):
        step = result.step
        metrics.step_done(result)  # the metrics line at log steps
        if cfg.eval.every and step % cfg.eval.every == 0 and step != cfg.train.steps:
            metrics.add_eval(step, evaluate(cfg, parts, env))
        guard.step_done(step, result.loss)  # non-finite loss bookkeeping, fault injection
        if ckpt.due(step):
            guard.check_before_save(parts)  # never save weights a non-finite loss has touched
            parts.embeddings.raise_bad_ids()  # nor rows an out-of-range id has touched
            ckpt.save(step, guard.skipped_steps)
    metrics.finish_training()

    metrics.add_eval(step, evaluate(cfg, parts, env))
    summary = metrics.summary(step)
    summary.update(finish(cfg, parts, env, guard, ckpt, warm))
    env.log(
        f"done: {step} steps | final loss {summary['final_loss']:.5f} | eval auc {summary['eval_auc']:.5f} | "
        f"eval logloss {summary['eval_logloss']:.5f} | {summary['samples_per_sec']:.0f} samples/s after warm-up"
    )
    metrics.close(summary)
    shutdown(env)
    return summary


def finish(
    cfg: Config, parts, env, guard: LossGuard, ckpt: Checkpointer, warm: dict | None
) -> dict:
    """Collective: what the summary adds at the end: weights/optimizer digests, dynamic tables, export, checkpoint."""
    out = {
        "weights_digest": weights_digest(parts),
        "optimizer_digest": optimizer_digest(parts),
        "skipped_steps": guard.skipped_steps,
    }
    if parts.embeddings.dynamic:
        out["dynamic"] = parts.embeddings.dynamic_metrics()
    if cfg.export.enabled:
        out_dir = cfg.export.dir or os.path.join(cfg.run.dir, "export")
        rows = export_embeddings(
            parts.embeddings,
            out_dir,
            cfg.export.min_freq,
            env.rank,
            cfg.export.since_step,
            lambda: fail_point(cfg, env.rank, "export"),
        )
        # written whole into out_dir/step_<N> and named by out_dir/latest (training/export.py)
        step_dir = os.path.join(out_dir, f"step_{parts.embeddings.num_updates}")
        out["export"] = {"dir": out_dir, "path": step_dir, "rows": rows}
    if (
        cfg.export.model
    ):  # beside the embedding export: <export dir>/model (training/model_export.py)
        out["model"] = export_model(cfg, parts, env)
    if ckpt.last_path:
        out["checkpoint"] = ckpt.last_path
    if warm is not None:
        out["warm_start"] = warm
    return {**out, **ckpt.timings}


if __name__ == "__main__":
    main()
