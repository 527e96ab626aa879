"""Everything a run trains, built from the config: data source, tables, sharding plan, sharded embeddings,
dense network (DDP when W > 1) and its optimizer."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel as DDP

from embedding import (
    MixedDimCollection,
    ShardedEmbeddingCollection,
    ShardingPlan,
    SparseOptimizer,
    Table,
    make_collection,
    plan_sharding,
    resolve_tables,
)
from models import build_model
from models.objective import Objective
from training.config import Config
from training.data import DatasetSource, SyntheticSource, open_source
from training.distributed import DistContext

DENSE_OPTIMIZERS = {
    "sgd": torch.optim.SGD,
    "adagrad": torch.optim.Adagrad,
    "adam": torch.optim.Adam,
}


@dataclass
class Parts:
    """The parts of a run, as build() made them."""

    tables: list[Table]
    plan: ShardingPlan
    # updates itself in backward (fused sparse optimizer); tables of several dims: one collection per dim
    embeddings: ShardedEmbeddingCollection | MixedDimCollection
    model: torch.nn.Module  # the dense network, in DDP when W > 1
    optimizer: torch.optim.Optimizer  # the dense optimizer
    data: SyntheticSource | DatasetSource
    autocast: object  # bf16 autocast of the dense network on CUDA (train.bf16), else a no-op
    # what a training step calls: the loss of model's logits (models.objective), compiled or not (model.compile)
    step_loss: torch.nn.Module


def dense_autocast(cfg: Config, device: torch.device):
    """bf16 autocast of the dense network on CUDA (train.bf16), in training and evaluation alike."""
    return torch.autocast(
        "cuda", dtype=torch.bfloat16, enabled=cfg.train.bf16 and device.type == "cuda"
    )


def _dense_optimizer(
    cfg: Config, model: torch.nn.Module, device: torch.device
) -> torch.optim.Optimizer:
    o = cfg.optimizer
    kwargs = {"eps": o.eps} if o.dense != "sgd" else {}
    if o.dense == "adam":
        kwargs["betas"] = (o.beta1, o.beta2)
    # one multi-tensor kernel per op over all parameters, not one launch per parameter
    if device.type == "cuda":
        kwargs["fused" if o.dense == "adam" else "foreach"] = True
    return DENSE_OPTIMIZERS[o.dense](model.parameters(), lr=o.dense_lr, **kwargs)


def sharding_plan(cfg: Config, tables: list[Table], world_size: int) -> ShardingPlan:
    """Where each table lives at this world size (embedding.plan_sharding with the config's settings)."""
    e = cfg.embedding
    return plan_sharding(
        tables,
        world_size,
        storage_dtype=e.storage_dtype,
        optimizer=cfg.optimizer.sparse,
        default_placement=e.sharding,
        replicate_below_bytes=e.replicate_below_bytes,
        memory_budget_bytes=e.memory_budget_bytes,
    )


def _dense_network(cfg: Config, tables: list[Table], feature_dims: list[int]) -> torch.nn.Module:
    """The model's network; each feature's dim and table tell it which tables differ from embedding.dim."""
    feature_tables = [t.name for t in tables for _ in t.features]
    return build_model(
        cfg.model,
        cfg.data.num_dense,
        len(feature_tables),
        cfg.embedding.dim,
        cfg.run.seed,
        feature_dims,
        feature_tables,
    )


def build(cfg: Config, env: DistContext) -> Parts:
    """The run's parts. A dataset (data.path) first sets the tables, dense width and steps in cfg."""
    if cfg.train.global_batch_size % env.world_size:
        raise ValueError(
            f"train.global_batch_size={cfg.train.global_batch_size} is not divisible by "
            f"{env.world_size} ranks"
        )
    data = open_source(cfg, env)
    tables = resolve_tables(cfg.embedding)
    o, e = cfg.optimizer, cfg.embedding
    plan = sharding_plan(cfg, tables, env.world_size)
    embeddings = make_collection(
        tables,
        plan,
        SparseOptimizer(o.sparse, o.sparse_lr, o.eps, o.beta1, o.beta2),
        rank=env.rank,
        world_size=env.world_size,
        group=env.group,
        device=env.device,
        seed=cfg.run.seed,
        storage_dtype=e.storage_dtype,
        exchange_dtype=e.exchange_dtype,
        input_group=env.input_group,
    )
    if isinstance(data, DatasetSource):  # a bad id's error then names its file and row
        embeddings.ids.locate = data.locate
    torch.manual_seed(cfg.run.seed)  # same dense init on every rank and at every world size
    dense = _dense_network(cfg, tables, embeddings.feature_dims)
    dense = dense.to(env.device)
    cuda = env.device.type == "cuda"
    # broadcast_buffers=False: the dense network's buffers (the interaction's index tensors) never
    # change, so DDP need not broadcast them from rank 0 before every forward;
    # gradient_as_bucket_view: the backward writes gradients straight into DDP's all-reduce buckets
    # (no copy per parameter)
    ddp = dict(broadcast_buffers=False, gradient_as_bucket_view=True)
    model = dense
    if env.world_size > 1:
        model = DDP(dense, device_ids=[env.device.index] if cuda else None, **ddp)
        # the mean over ranks as one division per bucket, not one multiply per parameter (the same
        # bits when W is a power of two)
        model.register_comm_hook(None, default_hooks.allreduce_hook)
    # torch.compile of the dense network: measured 8.66 -> 3.86 ms (DLRM) and 22.5 -> 18.3 ms (DCN-v2) per step at
    # batch 65536 on an H100 (docs/gpu_results.md), so "auto" turns it on for CUDA
    compiled = cfg.model.compile == "on" or (cfg.model.compile == "auto" and cuda)
    return Parts(
        tables,
        plan,
        embeddings,
        model,
        _dense_optimizer(cfg, model, env.device),
        data,
        dense_autocast(cfg, env.device),
        torch.compile(Objective(model)) if compiled else Objective(model),
    )
