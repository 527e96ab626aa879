"""A run's metrics: the window of steps between log lines, metrics.jsonl, the rank-0 log line and the
summary (summary.json). Throughput counts only the steps after train.warmup_steps and the profiled steps."""

from __future__ import annotations

import os
import time

import torch
import torch.distributed as dist

from embedding.byte_model import MemoryBytes
from models.flops import dense_flops_per_sample
from training.build import Parts
from training.config import Config, to_dict
from training.distributed import DistContext
from training.guards import LossGuard
from training.jsonio import dumps, write_json_atomic
from training.loop import StepResult
from training.peak import hbm_bandwidth, mfu, peak_flops, peak_memory_gib
from training.profiling import StepProfiler
from training.stages import STAGES, StageTimer


class RunMetrics:
    """step_done() after every step, add_eval() after every evaluation, finish_training() after the last step,
    summary() at the end, close() to write summary.json."""

    def __init__(
        self, cfg: Config, parts: Parts, env: DistContext, guard: LossGuard, first_step: int = 0
    ):
        self.cfg, self.parts, self.env, self.guard = cfg, parts, env, guard
        self.first_step = first_step
        self.timer = StageTimer(env.device)  # stage names: training.stages.STAGES
        # steps excluded from samples/s: warm-up, then the profiled ones (the profiler slows them)
        self.unmeasured = cfg.train.warmup_steps + cfg.run.profile_steps
        # on CPU the launch census predicts the dense network as a CUDA run would run it: compiled
        # unless model.compile is "off", under bf16 autocast when train.bf16
        self.profiler = StepProfiler(
            env.device,
            first_step + cfg.train.warmup_steps + 1,
            cfg.run.profile_steps,
            dense_compiled=cfg.model.compile != "off",
            dense_autocast=torch.bfloat16 if cfg.train.bf16 else None,
        )
        emb = parts.embeddings
        self.flops = dense_flops_per_sample(
            cfg.model, cfg.data.num_dense, len(emb.features), cfg.embedding.dim, emb.feature_dims
        )
        self.dtype = "bf16" if cfg.train.bf16 and env.device.type == "cuda" else "fp32"
        self.hbm = hbm_bandwidth(env.device)
        # on CPU a 0.2 s probe (cached): run it now, not inside the measured steps
        peak_flops(env.device, self.dtype)
        self._new_window()
        # over the measured steps (after warm-up), for summary.json
        self.stage_totals: dict[str, float] = {}
        self.warmup_stages: dict[str, float] = {}
        self.measured_start: float | None = None
        self.measured_memory_bytes = 0
        # embedding.byte_model.MemoryBytes of each step of the window, and whether it is measured
        self.window_memory: list = []
        self.end = None
        self.last_window_loss = float("nan")
        self.history: list[dict] = []  # every metrics line
        self.evals: list[dict] = []  # every evaluation, for summary.json
        path = os.path.join(cfg.run.dir, "metrics.jsonl")
        self.file = open(path, "a" if first_step else "w") if env.rank == 0 else None

    def _new_window(self) -> None:
        self.window_losses: list[torch.Tensor] = []
        self.window_bytes = 0
        self.window_memory = []
        self.window_start = time.perf_counter()

    def step_done(self, result: StepResult) -> None:
        """Record the step; the metrics line at log steps and at the last step."""
        emb, step = self.parts.embeddings, result.step
        self.window_losses.append(result.loss)
        self.window_bytes += emb.last_exchange_bytes
        memory = emb.last_memory_bytes  # a list with tables of several dims: one per dim
        for part in memory if isinstance(memory, list) else [memory]:
            self.window_memory.append((self.measured_start is not None, part))
        if step - self.first_step == self.unmeasured:
            self.env.synchronize()
            self.measured_start = time.perf_counter()
            # kept apart: only this window's metrics line counts them
            self.warmup_stages = self.timer.collect()
        if step % self.cfg.run.log_every == 0 or step == self.cfg.train.steps:
            self._log_line(step, (result.dense_lr, result.sparse_lr))

    def _window_stages(self) -> dict[str, float]:
        stages = self.timer.collect()  # since the last log line, or since warm-up ended
        if self.measured_start is not None:
            for k, v in stages.items():
                self.stage_totals[k] = self.stage_totals.get(k, 0.0) + v
            stages = {k: stages.get(k, 0.0) + self.warmup_stages.pop(k, 0.0) for k in STAGES}
        return stages

    def _log_line(self, step: int, lrs: tuple[float, float]) -> None:
        env, n = self.env, len(self.window_losses)
        losses = torch.stack(self.window_losses)
        if env.world_size > 1:
            dist.all_reduce(losses)
            losses /= env.world_size
        # raises on NaN/inf, or drops skipped steps' losses
        losses = self.guard.check_window(losses, step)
        env.synchronize()
        elapsed = time.perf_counter() - self.window_start
        stages = self._window_stages()
        step_ms = elapsed * 1e3 / n
        self.last_window_loss = float(losses.mean())
        sps = n * self.cfg.train.global_batch_size / elapsed
        measured = MemoryBytes.total([b for m, b in self.window_memory if m])
        self.measured_memory_bytes += measured
        window_bytes = measured + MemoryBytes.total([b for m, b in self.window_memory if not m])
        emb_bps = window_bytes / elapsed  # this rank's embedding kernels
        utilization = mfu(self.flops.training, sps / env.world_size, env.device, self.dtype)
        line = {
            "step": step,
            "loss": self.last_window_loss,
            "losses": losses.tolist(),
            "samples_per_sec": sps,
            "step_ms": step_ms,
            "exchange_bytes_per_step": self.window_bytes / n,
            "stage_ms": {k: stages.get(k, 0.0) / n for k in STAGES},
            "data_wait_pct": 100.0 * stages.get("data_wait", 0.0) / n / step_ms,
            "mfu_pct": 100.0 * utilization if utilization is not None else None,
            "embedding_gbps": emb_bps / 1e9,
            "embedding_hbm_pct": 100.0 * emb_bps / self.hbm if self.hbm else None,
            "peak_memory_gib": peak_memory_gib(env.device),
            "skipped_steps": self.guard.skipped_steps,
            "dense_lr": lrs[0],
            "sparse_lr": lrs[1],
        }
        # collective: live / pending keys, admissions and evictions per table
        if self.parts.embeddings.dynamic:
            line["dynamic"] = self.parts.embeddings.dynamic_metrics()
        self.history.append(line)
        if self.file:
            self.file.write(dumps(line) + "\n")
            self.file.flush()
        env.log(
            f"step {step:6d} | loss {line['loss']:.5f} | {sps:10.0f} samples/s | {step_ms:7.2f} ms/step | "
            f"a2a {line['exchange_bytes_per_step'] / 1e3:8.1f} kB/step/rank | "
            f"data wait {line['data_wait_pct']:.1f}% | MFU {line['mfu_pct'] or float('nan'):.2f}% | "
            f"emb {line['embedding_gbps']:.2f} GB/s | mem {line['peak_memory_gib']:.2f} GiB | "
            f"lr {lrs[0]:.3g}/{lrs[1]:.3g}"
        )
        self._new_window()

    def add_eval(self, step: int, result: tuple[float, float]) -> None:
        self.evals.append({"step": step, "auc": result[0], "logloss": result[1]})
        self.env.log(f"step {step:6d} | eval auc {result[0]:.5f} | eval logloss {result[1]:.5f}")

    def finish_training(self) -> None:
        """After the last step: the clock of samples/s stops once the device is done."""
        self.env.synchronize()
        self.end = time.perf_counter()

    def summary(self, step: int) -> dict:
        """summary.json's content after `step` steps (the final evaluation already added)."""
        cfg, env, parts = self.cfg, self.env, self.parts
        measured_steps = step - self.first_step - self.unmeasured
        seconds = self.end - self.measured_start if self.measured_start is not None else None
        samples_per_sec = (
            measured_steps * cfg.train.global_batch_size / seconds
            if seconds is not None and measured_steps > 0
            else float("nan")
        )
        utilization = mfu(
            self.flops.training, samples_per_sec / env.world_size, env.device, self.dtype
        )
        exchange = self.history[-1]["exchange_bytes_per_step"] if self.history else 0
        last = self.evals[-1]
        return {
            "world_size": env.world_size,
            "steps": step,
            "global_batch_size": cfg.train.global_batch_size,
            "final_loss": self.last_window_loss,
            "eval_auc": last["auc"],
            "eval_logloss": last["logloss"],
            "samples_per_sec": samples_per_sec,
            "device": torch.cuda.get_device_name(env.device)
            if env.device.type == "cuda"
            else "cpu",
            "exchange_bytes_per_step": exchange,
            "plan": {t.name: parts.plan.placements[t.name].placement for t in parts.tables},
            "config": to_dict(cfg),
            "mfu_pct": 100.0 * utilization if utilization is not None else None,
            "dense_dtype": self.dtype,
            "dense_flops_per_sample": self.flops.training,
            "peak_memory_gib": peak_memory_gib(env.device),
            # inputs of bench/scaling.py: communication-inclusive stage times of the measured steps
            "stage_ms": {k: self.stage_totals.get(k, 0.0) / max(measured_steps, 1) for k in STAGES},
            "exchange_bytes_per_rank": exchange,
            "allreduce_bytes": 4 * sum(p.numel() for p in parts.model.parameters()),
            "local_batch": cfg.train.global_batch_size // env.world_size,
            "embedding_gbps": self.measured_memory_bytes / seconds / 1e9 if seconds else None,
            "data_wait_pct": 100.0 * self.stage_totals.get("data_wait", 0.0) / 1e3 / seconds
            if seconds
            else None,
            "profile": self.profiler.result,
            "evals": self.evals,
        }

    def close(self, summary: dict) -> None:
        """Rank 0 writes summary.json (atomically) and closes metrics.jsonl."""
        if self.file:
            self.file.close()
            write_json_atomic(os.path.join(self.cfg.run.dir, "summary.json"), summary)
