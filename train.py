"""RecFuse training entry point: config -> build -> train/eval loop -> report.

    # CPU or GPU, one machine, N processes (gloo on CPU, nccl on GPUs, picked automatically)
    torchrun --standalone --nproc_per_node=2 train.py --config configs/tiny.toml
    # any config key can be overridden: --section.key value  or  --section.key=value
    torchrun --standalone --nproc_per_node=4 train.py --config configs/tiny.toml --run.dir /tmp/x --train.steps 50
    # single process without torchrun
    python train.py --config configs/tiny.toml

Embedding tables are sharded over ranks (embedding.ShardedEmbeddingCollection, rows exchanged
with all-to-all); the dense network is replicated with DDP. Writes <run.dir>/metrics.jsonl
(one line per log step) and <run.dir>/summary.json.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import checkpoint
from config import Config, TableConfig, load_config, to_dict
from embedding import ShardedEmbeddingCollection, SparseOptimizer, plan_sharding, resolve_tables
from models import build_model
from models.flops import dense_flops_per_sample
from models.peak import hbm_bandwidth, mfu, peak_flops, peak_memory_gib
from pipeline.loaders import eval_loader, open_dataset, open_eval_dataset, train_loader
from pipeline.metrics import STAGES, StageTimer, auc, logloss, write_json_atomic
from pipeline.multihot import multi_hot_from_config
from pipeline.prefetch import PrefetchLoader
from pipeline.profiling import StepProfiler
from pipeline.schedule import apply_lr
from pipeline.synthetic import SyntheticData, SyntheticFeature
from pipeline.train_pipeline import SparseDistPipeline


# ---- distributed setup ----------------------------------------------------------------------------------
def pick_device(cfg: Config, local_rank: int, local_world: int, gpus: int) -> tuple[str, torch.device, str]:
    """(backend, device, note) for local rank r of local_world ranks on a node with `gpus` CUDA devices.

    Rank r uses GPU r % gpus. NCCL needs a GPU per rank; with fewer GPUs than local ranks run.backend "auto"
    falls back to gloo (it takes CUDA tensors for all-reduce, all-to-all and DDP), so W ranks can share one
    GPU for tests and debugging; an explicit "nccl" is then an error that says so."""
    use_cuda = cfg.run.device == "cuda" or (cfg.run.device == "auto" and gpus > 0)
    backend = cfg.run.backend if cfg.run.backend != "auto" else ("nccl" if use_cuda else "gloo")
    if not use_cuda:
        return backend, torch.device("cpu"), ""
    if gpus == 0:
        raise RuntimeError("run.device=cuda but torch sees no CUDA device")
    note = ""
    if local_world > gpus and backend == "nccl":
        if cfg.run.backend == "nccl":
            raise ValueError(f"run.backend=nccl needs one GPU per rank, but this node runs {local_world} ranks on "
                             f"{gpus} GPU(s); use --run.backend gloo to share GPUs")
        backend, note = "gloo", f"{local_world} ranks on {gpus} GPU(s): backend gloo (NCCL needs one GPU per rank)"
    return backend, torch.device("cuda", local_rank % gpus), note


def setup_distributed(cfg: Config):
    """Rank, world size, device and the embedding exchange's process group (None when W = 1)."""
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    backend, device, note = pick_device(cfg, local_rank, local_world, gpus)
    if note:
        log0(rank, note)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    group = None
    if world_size > 1:
        # nccl binds the group to this rank's GPU; gloo sharing a GPU must not (device_id is nccl's)
        checkpoint.init_process_group(backend, timedelta(seconds=cfg.train.timeout_s),
                                      device if backend == "nccl" else None)
        # embedding exchanges stay apart from DDP's all-reduces; new_group's timeout does not default to the world's
        group = dist.new_group(backend=backend, timeout=timedelta(seconds=cfg.train.timeout_s))
    return rank, world_size, device, group


def log0(rank: int, *args) -> None:
    if rank == 0:
        print(*args, flush=True)


# ---- data -----------------------------------------------------------------------------------------------
def synthetic_source(cfg: Config, tables, device: torch.device | str = "cpu") -> SyntheticData:
    """Synthetic samples made on `device` (the training device: the host cannot keep up with a GPU)."""
    features = []
    for t_index, (t_cfg, table) in enumerate(zip(cfg.embedding.tables, tables, strict=True)):
        lo = t_cfg.bag_min if t_cfg.bag_min >= 0 else cfg.data.bag_min
        hi = t_cfg.bag_max if t_cfg.bag_max >= 0 else cfg.data.bag_max
        features += [SyntheticFeature(f, t_index, table.num_embeddings, lo, hi, t_cfg.hash_ids) for f in table.features]
    return SyntheticData(features, cfg.data.num_dense, cfg.data.zipf_exponent, cfg.data.signal, cfg.run.seed, device)


def use_dataset_tables(cfg: Config, dataset) -> None:
    """With data.path the dataset defines the id space: one table per categorical feature sized from
    the dataset (when the config lists no tables), or the listed tables resized to the dataset's rows."""
    cfg.data.num_dense = dataset.num_dense
    cfg.embedding.row_scale = 1.0
    rows = dict(zip(dataset.feature_names, dataset.table_rows, strict=True))
    if not cfg.embedding.tables:
        cfg.embedding.tables = [TableConfig(name=f, num_embeddings=n) for f, n in rows.items()]
    listed = [f for t in cfg.embedding.tables for f in (t.features or [t.name])]
    if sorted(listed) != sorted(rows):
        raise ValueError(f"dataset {cfg.data.path} has features {list(rows)} but the config's tables list {listed}; "
                         "list no [[embedding.tables]] to take the dataset's")
    for t in cfg.embedding.tables:
        t.num_embeddings = max(rows[f] for f in (t.features or [t.name]))
    multi_hot_from_config(cfg)  # one size per table: a wrong count fails here, naming data.multi_hot_sizes


def train_batches(cfg: Config, source, rank: int, world_size: int, device, first_step: int = 0) -> PrefetchLoader:
    """This rank's train batches, prefetched onto the device by a background thread."""
    if isinstance(source, SyntheticData):
        host = local_batches(source, cfg.train.global_batch_size, rank, world_size, cfg.train.steps, SyntheticData.TRAIN,
                             first_step)
        checked = checkpoint.checked_batches(host, cfg.train.global_batch_size, rank, world_size, first_step)
        return PrefetchLoader(checked, device, depth=cfg.data.prefetch_depth)
    return train_loader(source, cfg.data, cfg.train.global_batch_size, rank, world_size, device, cfg.run.seed, first_step,
                        check=checkpoint.check_batch, transform=multi_hot_from_config(cfg), last_step=cfg.train.steps)


def local_batches(source: SyntheticData, global_batch: int, rank: int, world_size: int, steps: int, stream: int,
                  first_step: int = 0):
    """Rank r's contiguous slice of each global batch: the sample stream ignores the world size."""
    local = global_batch // world_size
    for step in range(first_step, steps):
        yield source.batch(step * global_batch + rank * local, local, stream)


# ---- model ----------------------------------------------------------------------------------------------
@dataclass
class Parts:
    tables: list
    plan: object
    embeddings: ShardedEmbeddingCollection
    model: torch.nn.Module  # the dense network, in DDP when W > 1
    optimizer: torch.optim.Optimizer  # dense optimizer; embeddings update themselves in backward
    source: object  # SyntheticData, or a pipeline.dataset.BinaryDataset when data.path is set
    autocast: object
    eval_source: object = None  # what evaluate() reads: data.eval_path's dataset, else source
    step_model: object = None  # what train_step calls: model, or torch.compile(model) (model.compile)


def dense_autocast(cfg: Config, device: torch.device):
    """bf16 autocast of the dense network on CUDA (train.bf16), in training and evaluation alike."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.train.bf16 and device.type == "cuda")


def build(cfg: Config, rank: int, world_size: int, device: torch.device, group) -> Parts:
    """Tables, sharding plan, sharded embeddings, dense model (DDP), dense optimizer, data source."""
    dataset = open_dataset(cfg.data) if cfg.data.path else None
    eval_dataset = open_eval_dataset(cfg.data, dataset) if cfg.data.eval_path else None
    if dataset is not None:
        use_dataset_tables(cfg, dataset)
        per_epoch = dataset.steps_per_epoch(cfg.train.global_batch_size, cfg.data.train_range or None)
        cfg.train.steps = min(cfg.train.steps, cfg.data.epochs * per_epoch) if cfg.train.steps else cfg.data.epochs * per_epoch
        if cfg.eval.every_epoch:
            cfg.eval.every = per_epoch
    tables = resolve_tables(cfg.embedding)
    o = cfg.optimizer
    plan = plan_sharding(tables, world_size, storage_dtype=cfg.embedding.storage_dtype, optimizer=o.sparse,
                         default_placement=cfg.embedding.sharding,
                         replicate_below_bytes=cfg.embedding.replicate_below_bytes,
                         memory_budget_bytes=cfg.embedding.memory_budget_bytes)
    embeddings = ShardedEmbeddingCollection(
        tables, plan, SparseOptimizer(o.sparse, o.sparse_lr, o.eps, o.beta1, o.beta2),
        rank=rank, world_size=world_size, group=group, device=device, seed=cfg.run.seed,
        storage_dtype=cfg.embedding.storage_dtype, exchange_dtype=cfg.embedding.exchange_dtype)
    torch.manual_seed(cfg.run.seed)  # same dense init on every rank and at every world size
    dense_model = build_model(cfg.model, cfg.data.num_dense, len(embeddings.features), cfg.embedding.dim,
                              seed=cfg.run.seed).to(device)
    model = DDP(dense_model, device_ids=[device.index] if device.type == "cuda" else None) if world_size > 1 else dense_model
    dense_opt = {"sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad, "adam": torch.optim.Adam}[o.dense]
    opt_kwargs = {"eps": o.eps} if o.dense != "sgd" else {}
    if o.dense == "adam":
        opt_kwargs["betas"] = (o.beta1, o.beta2)
    if device.type == "cuda":  # one multi-tensor kernel per op over all parameters, not one launch per parameter
        opt_kwargs["fused" if o.dense == "adam" else "foreach"] = True
    optimizer = dense_opt(model.parameters(), lr=o.dense_lr, **opt_kwargs)
    autocast = dense_autocast(cfg, device)
    # torch.compile of the dense network: measured 8.66 -> 3.86 ms (DLRM) and 22.5 -> 18.3 ms (DCN-v2) per step at
    # batch 65536 on an H100 (../shared/GPU_RESULTS.md section 5), so "auto" turns it on for CUDA
    compiled = cfg.model.compile == "on" or (cfg.model.compile == "auto" and device.type == "cuda")
    source = dataset if dataset is not None else synthetic_source(cfg, tables, device)
    return Parts(tables, plan, embeddings, model, optimizer, source, autocast, eval_dataset or source,
                 torch.compile(model) if compiled else model)


def train_step(parts: Parts, batch, sparse_dist, timer: StageTimer, before_backward=None) -> torch.Tensor:
    """One step on the local batch; returns the local mean loss (not synchronized).
    The embeddings time their own stages (lookup, output_dist, grad_dist, sparse_update) into the timer.
    before_backward(loss) -> (loss, skip): checkpoint.Checkpointer.before_backward (skip_nonfinite_loss)."""
    pooled = parts.embeddings(sparse_dist)
    with timer.stage("dense_fwd"), parts.autocast:
        logits = (parts.model if parts.step_model is None else parts.step_model)(batch.dense, pooled).float()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch.labels)
    if before_backward is not None:
        loss, skip = before_backward(loss)
        if skip:  # no dense and no sparse update from this batch
            return loss.detach()
    with timer.stage("dense_bwd"):  # the timer takes the embeddings' grad_dist + sparse_update out of it
        parts.optimizer.zero_grad(set_to_none=True)
        loss.backward()
    with timer.stage("dense_optimizer"):
        parts.optimizer.step()
    return loss.detach()


# ---- evaluation -----------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(cfg: Config, model, embeddings, source, rank, world_size, device) -> tuple[float, float]:
    """AUC and logloss over cfg.eval.samples held-out samples (source: Parts.eval_source), predictions gathered
    from all ranks."""
    model.eval()
    batch_size = max(cfg.eval.batch_size // world_size * world_size, world_size)
    steps = max(cfg.eval.samples // batch_size, 1)
    logits, labels = [], []
    if isinstance(source, SyntheticData):  # made on the device, as the train batches
        batches = (b.to(device) for b in local_batches(source, batch_size, rank, world_size, steps, SyntheticData.EVAL))
    else:
        batches = eval_loader(source, cfg.data, batch_size, rank, world_size, device, cfg.eval.samples,
                              check=checkpoint.check_batch, transform=multi_hot_from_config(cfg))
    for batch in batches:
        with dense_autocast(cfg, device):  # as in training: bf16 GEMMs, not fp32 ones
            logits.append(model(batch.dense, embeddings(batch.sparse)).float())
        labels.append(batch.labels)
    logits, labels = torch.cat(logits), torch.cat(labels)
    if world_size > 1:
        both = torch.stack([logits, labels])
        if dist.get_backend() != "nccl":  # gloo all-gathers host tensors only (all-reduce and all-to-all take CUDA ones)
            both = both.cpu()
        gathered = [torch.empty_like(both) for _ in range(world_size)]
        dist.all_gather(gathered, both)
        logits, labels = torch.cat([g[0] for g in gathered]), torch.cat([g[1] for g in gathered])
    model.train()
    return auc(logits.cpu(), labels.cpu()), logloss(logits.cpu(), labels.cpu())


# ---- main -----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict:
    cfg = load_config(argv)
    with checkpoint.explain_timeouts(cfg):
        return run(cfg)


def run(cfg: Config) -> dict:
    rank, world_size, device, group = setup_distributed(cfg)
    if cfg.train.global_batch_size % world_size:
        raise ValueError(f"train.global_batch_size={cfg.train.global_batch_size} is not divisible by {world_size} ranks")
    os.makedirs(cfg.run.dir, exist_ok=True)
    torch.manual_seed(cfg.run.seed)
    parts = build(cfg, rank, world_size, device, group)
    ckpt = checkpoint.Checkpointer(cfg, parts, rank, world_size)
    first_step = ckpt.restore()  # 0 on a fresh start
    embeddings, model, tables, plan = parts.embeddings, parts.model, parts.tables, parts.plan
    log0(rank, f"world_size={world_size} device={device}\n{plan.format(tables)}")
    source = parts.source
    batches = train_batches(cfg, source, rank, world_size, device, first_step)
    pipeline = SparseDistPipeline(batches, embeddings.input_dist, pipelined=cfg.train.pipelined)

    metrics_path = os.path.join(cfg.run.dir, "metrics.jsonl")
    metrics_file = open(metrics_path, "a" if first_step else "w") if rank == 0 else None
    timer = StageTimer(device)  # stage names: pipeline.metrics.STAGES
    embeddings.timer = timer
    window_losses: list[torch.Tensor] = []
    window_start, window_bytes, window_memory_bytes = time.perf_counter(), 0, 0
    flops = dense_flops_per_sample(cfg.model, cfg.data.num_dense, len(embeddings.features), cfg.embedding.dim)
    dtype = "bf16" if cfg.train.bf16 and device.type == "cuda" else "fp32"
    hbm = hbm_bandwidth(device)
    peak_flops(device, dtype)  # on CPU a 0.2 s probe (cached): run it now, not inside the measured steps
    stage_totals: dict[str, float] = {}  # over the measured steps (after warm-up), for summary.json
    warmup_stages: dict[str, float] = {}
    measured_start, last_window_loss, eval_auc, eval_logloss = None, float("nan"), float("nan"), float("nan")
    history, evals = [], []  # evals: every evaluation this process made, for summary.json

    # steps excluded from samples/s: warm-up, then the profiled ones (the profiler slows them)
    unmeasured = cfg.train.warmup_steps + cfg.run.profile_steps
    profiler = StepProfiler(device, first_step + cfg.train.warmup_steps + 1, cfg.run.profile_steps)
    measured_memory_bytes = 0
    step = first_step
    for step, (batch, sparse_dist) in enumerate(pipeline, start=first_step + 1):
        profiler.before_step(step)
        # next() also ran the upcoming batch's input_dist (timed by the embeddings): only the loader's wait is data wait
        timer.add("data_wait", batches.data_wait_ms)
        timer.add("h2d", batches.h2d_ms)  # side-stream copy time, overlapped with compute on GPU
        dense_lr, sparse_lr = apply_lr(step, cfg, parts.optimizer, embeddings)  # before backward: the sparse update
        loss = train_step(parts, batch, sparse_dist, timer, ckpt.before_backward)
        window_losses.append(loss.detach())
        window_bytes += embeddings.last_exchange_bytes
        window_memory_bytes += embeddings.last_memory_bytes
        profiler.after_step(step)
        if measured_start is not None:
            measured_memory_bytes += embeddings.last_memory_bytes

        if step - first_step == unmeasured:
            if device.type == "cuda":
                torch.cuda.synchronize()
            measured_start = time.perf_counter()
            warmup_stages = timer.collect()  # kept apart: only this window's metrics line counts them
        if step % cfg.run.log_every == 0 or step == cfg.train.steps:
            losses = torch.stack(window_losses)
            if world_size > 1:
                dist.all_reduce(losses)
                losses /= world_size
            losses = ckpt.check_losses(losses, step)  # raises on NaN/inf, or drops skipped steps' losses
            if device.type == "cuda":
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - window_start
            stages = timer.collect()  # since the last log line, or since warm-up ended
            if measured_start is not None:
                for k, v in stages.items():
                    stage_totals[k] = stage_totals.get(k, 0.0) + v
                stages = {k: stages.get(k, 0.0) + warmup_stages.pop(k, 0.0) for k in STAGES}
            step_ms = elapsed * 1e3 / len(window_losses)
            last_window_loss = float(losses.mean())
            n = len(window_losses)
            sps = n * cfg.train.global_batch_size / elapsed
            emb_bps = window_memory_bytes / elapsed  # this rank's embedding kernels
            utilization = mfu(flops.training, sps / world_size, device, dtype)
            line = {"step": step, "loss": last_window_loss, "losses": losses.tolist(), "samples_per_sec": sps,
                    "step_ms": step_ms, "exchange_bytes_per_step": window_bytes / n,
                    "stage_ms": {k: stages.get(k, 0.0) / n for k in STAGES},
                    "data_wait_pct": 100.0 * stages.get("data_wait", 0.0) / n / step_ms,
                    "mfu_pct": 100.0 * utilization if utilization is not None else None,
                    "embedding_gbps": emb_bps / 1e9, "embedding_hbm_pct": 100.0 * emb_bps / hbm if hbm else None,
                    "peak_memory_gib": peak_memory_gib(device), "skipped_steps": ckpt.skipped_steps,
                    "dense_lr": dense_lr, "sparse_lr": sparse_lr}
            if embeddings.dynamic:  # collective: live / pending keys, admissions and evictions per dynamic table
                line["dynamic"] = embeddings.dynamic_metrics()
            history.append(line)
            if metrics_file:
                metrics_file.write(json.dumps(line) + "\n")
                metrics_file.flush()
            log0(rank, f"step {step:6d} | loss {line['loss']:.5f} | {line['samples_per_sec']:10.0f} samples/s | "
                       f"{step_ms:7.2f} ms/step | a2a {line['exchange_bytes_per_step'] / 1e3:8.1f} kB/step/rank | "
                       f"data wait {line['data_wait_pct']:.1f}% | MFU {line['mfu_pct'] or float('nan'):.2f}% | "
                       f"emb {line['embedding_gbps']:.2f} GB/s | mem {line['peak_memory_gib']:.2f} GiB | "
                       f"lr {dense_lr:.3g}/{sparse_lr:.3g}")
            window_losses, window_bytes, window_memory_bytes, window_start = [], 0, 0, time.perf_counter()
        if cfg.eval.every and step % cfg.eval.every == 0 and step != cfg.train.steps:
            eval_auc, eval_logloss = evaluate(cfg, model, embeddings, parts.eval_source, rank, world_size, device)
            evals.append({"step": step, "auc": eval_auc, "logloss": eval_logloss})
            log0(rank, f"step {step:6d} | eval auc {eval_auc:.5f} | eval logloss {eval_logloss:.5f}")
        ckpt.step_done(step, loss)  # checkpoint every train.checkpoint_every steps, fault injection

    batches.close()
    if device.type == "cuda":
        torch.cuda.synchronize()
    end = time.perf_counter()
    measured_steps = step - first_step - unmeasured
    samples_per_sec = (measured_steps * cfg.train.global_batch_size / (end - measured_start)
                       if measured_start is not None and measured_steps > 0 else float("nan"))
    eval_auc, eval_logloss = evaluate(cfg, model, embeddings, parts.eval_source, rank, world_size, device)
    evals.append({"step": step, "auc": eval_auc, "logloss": eval_logloss})
    utilization = mfu(flops.training, samples_per_sec / world_size, device, dtype)
    summary = {"world_size": world_size, "steps": step, "global_batch_size": cfg.train.global_batch_size,
               "final_loss": last_window_loss, "eval_auc": eval_auc, "eval_logloss": eval_logloss,
               "samples_per_sec": samples_per_sec, "device": torch.cuda.get_device_name(device) if device.type == "cuda"
               else "cpu", "exchange_bytes_per_step": history[-1]["exchange_bytes_per_step"] if history else 0,
               "plan": {t.name: plan.placements[t.name].placement for t in tables}, "config": to_dict(cfg),
               "mfu_pct": 100.0 * utilization if utilization is not None else None, "dense_dtype": dtype,
               "dense_flops_per_sample": flops.training, "peak_memory_gib": peak_memory_gib(device),
               # inputs of bench/scaling.py: communication-inclusive stage times of the measured steps
               "stage_ms": {k: stage_totals.get(k, 0.0) / max(measured_steps, 1) for k in STAGES},
               "exchange_bytes_per_rank": history[-1]["exchange_bytes_per_step"] if history else 0,
               "allreduce_bytes": 4 * sum(p.numel() for p in model.parameters()),
               "local_batch": cfg.train.global_batch_size // world_size,
               "embedding_gbps": measured_memory_bytes / (end - measured_start) / 1e9 if measured_start else None,
               "data_wait_pct": 100.0 * stage_totals.get("data_wait", 0.0) / 1e3 / (end - measured_start)
               if measured_start else None, "profile": profiler.result, "evals": evals}
    ckpt.finish(summary)  # weights_digest, export
    log0(rank, f"done: {step} steps | final loss {last_window_loss:.5f} | eval auc {eval_auc:.5f} | "
               f"eval logloss {eval_logloss:.5f} | {samples_per_sec:.0f} samples/s after warm-up")
    if metrics_file:
        metrics_file.close()
        write_json_atomic(os.path.join(cfg.run.dir, "summary.json"), summary)
    if world_size > 1:
        dist.barrier()
        dist.destroy_process_group()
    return summary


if __name__ == "__main__":
    main()
