"""The TorchRec side of bench/compare_torchrec.py: the model, its DistributedModelParallel build (RecFuse's
initial rows, the same optimizers) and its training run. TorchRec is imported inside the functions, so that the
comparison can say how to install a missing TorchRec instead of failing at import."""

from __future__ import annotations

import time
import warnings
from types import SimpleNamespace

import torch
import torch.distributed as dist
from torch import nn

from embedding import EmbeddingCollection, SparseOptimizer, resolve_tables
from models import build_model
from training.config import Config
from training.data import SyntheticSource
from training.distributed import DistContext
from training.evaluate import evaluate

MIRROR = {"replicated": ["data_parallel"], "table": ["table_wise"], "row": ["row_wise"]}
# TorchRec 1.8 on CPU: no row-wise
CPU_SHARDINGS = ["table_wise", "column_wise", "table_column_wise"]


def quiet_torchrec() -> None:
    """TorchRec's planner and FBGEMM log advice meant for production jobs at every start."""
    import logging

    logging.getLogger("torchrec").setLevel(logging.ERROR)
    for module in ("torchrec", "fbgemm_gpu", "torch.autograd", "torch.distributed"):
        warnings.filterwarnings("ignore", module=module)


# ---- the TorchRec model -----------------------------------------------------------------------------------
class TorchRecRanker(nn.Module):
    """EmbeddingBagCollection + RecFuse's dense network. forward(torchrec Batch) -> (loss, (loss, logits)),
    the shape TorchRec's train pipelines expect (they sum and backprop the first item)."""

    def __init__(self, ebc, dense: nn.Module, features: list[str], bf16: bool):
        super().__init__()
        self.ebc, self.dense, self.features, self.bf16 = ebc, dense, features, bf16

    def forward(self, batch):
        # TorchRec orders keys by sharding type
        per_feature = self.ebc(batch.sparse_features).to_dict()
        # [B, F, D], RecFuse's order
        pooled = torch.stack([per_feature[f] for f in self.features], dim=1)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.dense(batch.dense_features, pooled).float()
        loss = nn.functional.binary_cross_entropy_with_logits(logits, batch.labels)
        return loss, (loss.detach(), logits.detach())


def to_torchrec(batch):
    """pipeline.batch.Batch -> torchrec.datasets.utils.Batch (same tensors, KeyedJaggedTensor view)."""
    from torchrec.datasets.utils import Batch
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    kjt = KeyedJaggedTensor(
        keys=list(batch.sparse.keys), values=batch.sparse.values, offsets=batch.sparse.offsets
    )
    return Batch(dense_features=batch.dense, sparse_features=kjt, labels=batch.labels)


class _EvalAdapter:
    """Lets training.evaluate drive the DMP model: evaluate calls model(dense, embeddings(sparse))."""

    def __init__(self, dmp):
        self.dmp = dmp

    def eval(self):
        self.dmp.eval()

    def train(self):
        self.dmp.train()

    def __call__(self, dense, sparse):
        from pipeline.batch import Batch

        labels = torch.zeros(dense.shape[0], device=dense.device)
        return self.dmp(to_torchrec(Batch(dense, labels, sparse)))[1][1]


# ---- optimizers and initial rows --------------------------------------------------------------------------
def sparse_optimizer(name: str):
    """The torch optimizer class TorchRec maps onto FBGEMM's fused one (and runs itself for DP tables)."""
    from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

    if name not in ("adagrad", "sgd"):
        raise ValueError(
            f"optimizer.sparse={name!r}: the TorchRec comparison supports 'adagrad' (row-wise) and 'sgd' "
            "(RecFuse's lazy per-row Adam has no exact FBGEMM counterpart)"
        )
    return RowWiseAdagrad if name == "adagrad" else torch.optim.SGD


def dense_optimizer_factory(o):
    """Same dense optimizer as training.build."""
    cls = {"sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad, "adam": torch.optim.Adam}[
        o.dense
    ]
    kwargs = {"lr": o.dense_lr, **({"eps": o.eps} if o.dense != "sgd" else {})}
    if o.dense == "adam":
        kwargs["betas"] = (o.beta1, o.beta2)
    return lambda params: cls(params, **kwargs)


def copy_initial_rows(dmp, tables, seed: int) -> None:
    """Overwrite TorchRec's random init with RecFuse's: both start from the same tables."""
    # every table, this process
    ref = EmbeddingCollection(tables, SparseOptimizer("sgd"), seed=seed)
    full = {
        t.name: ref.weight[ref.layout.base[i] : ref.layout.base[i] + t.num_embeddings]
        for i, t in enumerate(tables)
    }
    copied = set()
    with torch.no_grad():
        for key, value in dmp.state_dict().items():
            name = (
                key.split("embedding_bags.")[-1].removesuffix(".weight")
                if "embedding_bags." in key
                else None
            )
            if name not in full:
                continue
            shards = (
                [(s.tensor, s.metadata.shard_offsets) for s in value.local_shards()]
                if hasattr(value, "local_shards")
                else [(value, [0, 0])]
            )
            for tensor, (row, col) in shards:
                tensor.copy_(full[name][row : row + tensor.shape[0], col : col + tensor.shape[1]])
            copied.add(name)
    if copied != set(full):
        raise RuntimeError(
            f"TorchRec state_dict has no weights for tables {sorted(set(full) - copied)}"
        )


def combined_optimizer(dmp, o, sparse_cls, sparse_kwargs: dict):
    """DMP's fused optimizer (sharded tables), the dense optimizer, and the sparse one for data-parallel tables,
    which TorchRec leaves outside its fused kernels."""
    from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
    from torchrec.optim.optimizers import in_backward_optimizer_filter

    # dense layers + data_parallel tables
    outside = dict(in_backward_optimizer_filter(dmp.named_parameters()))
    dp_params = {k: v for k, v in outside.items() if "embedding_bags." in k}
    dense_params = {k: v for k, v in outside.items() if k not in dp_params}
    optimizers = [
        ("fused", dmp.fused_optimizer),
        ("dense", KeyedOptimizerWrapper(dense_params, dense_optimizer_factory(o))),
    ]
    if dp_params:
        optimizers.append(
            (
                "dp_tables",
                KeyedOptimizerWrapper(dp_params, lambda p: sparse_cls(p, **sparse_kwargs)),
            )
        )
    return CombinedOptimizer(optimizers)


# ---- building the DMP model -------------------------------------------------------------------------------
def embedding_bags(tables):
    """An EmbeddingBagCollection of RecFuse's tables on the meta device (DMP materializes the shards)."""
    from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, PoolingType

    return EmbeddingBagCollection(
        device=torch.device("meta"),
        tables=[
            EmbeddingBagConfig(
                name=t.name,
                embedding_dim=t.dim,
                num_embeddings=t.num_embeddings,
                feature_names=list(t.features),
                pooling=PoolingType.MEAN if t.pooling == "mean" else PoolingType.SUM,
            )
            for t in tables
        ],
    )


def sharding_constraints(recfuse_plan: dict, device: torch.device, plan_mode: str):
    """Plan mode "mirror": each table's sharding type from RecFuse's placement; "planner": None (TorchRec's
    planner decides)."""
    from torchrec.distributed.planner import ParameterConstraints

    if plan_mode != "mirror":
        return None
    cpu = device.type == "cpu"
    return {
        name: ParameterConstraints(
            sharding_types=CPU_SHARDINGS if cpu and kind == "row" else MIRROR[kind]
        )
        for name, kind in recfuse_plan.items()
    }


def collective_plan(model, sharders, constraints, world_size: int, device: torch.device):
    """TorchRec's sharding plan, agreed over the process group, and {table: (sharding type, kernel, ranks)}."""
    from torchrec.distributed.planner import EmbeddingShardingPlanner
    from torchrec.distributed.planner.types import KernelConfig, TopologyFactory, TrainerConfig

    topology = TopologyFactory.create_topology(
        TrainerConfig(world_size=world_size, local_world_size=world_size),
        kernel_config=KernelConfig(compute_device=device.type),
    )
    plan = EmbeddingShardingPlanner(topology=topology, constraints=constraints).collective_plan(
        model, sharders, dist.GroupMember.WORLD
    )
    torchrec_plan = {
        name: (p.sharding_type, p.compute_kernel, p.ranks)
        for ps in plan.plan.values()
        for name, p in ps.items()
    }
    return plan, torchrec_plan


def build_torchrec(
    cfg: Config, recfuse_plan: dict, world_size: int, device: torch.device, plan_mode: str
):
    """DMP model, its combined optimizer and TorchRec's plan {table: (sharding type, kernel, ranks)}."""
    from torchrec.distributed import DistributedModelParallel
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

    tables, o = resolve_tables(cfg.embedding), cfg.optimizer
    features = [f for t in tables for f in t.features]
    ebc = embedding_bags(tables)
    sparse_cls = sparse_optimizer(o.sparse)
    sparse_kwargs = {"lr": o.sparse_lr, **({"eps": o.eps} if o.sparse == "adagrad" else {})}
    # sharding pops keys from it
    apply_optimizer_in_backward(sparse_cls, ebc.parameters(), dict(sparse_kwargs))

    constraints = sharding_constraints(recfuse_plan, device, plan_mode)
    sharders = [EmbeddingBagCollectionSharder()]
    torch.manual_seed(cfg.run.seed)  # the dense init of training.build
    dense = build_model(
        cfg.model, cfg.data.num_dense, len(features), cfg.embedding.dim, seed=cfg.run.seed
    ).to(device)
    model = TorchRecRanker(ebc, dense, features, cfg.train.bf16 and device.type == "cuda")
    plan, torchrec_plan = collective_plan(model, sharders, constraints, world_size, device)
    dmp = DistributedModelParallel(model, device=device, plan=plan, sharders=sharders)
    copy_initial_rows(dmp, tables, cfg.run.seed)
    return dmp, combined_optimizer(dmp, o, sparse_cls, sparse_kwargs), torchrec_plan


# ---- training ---------------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_steps(cfg: Config, dmp, optimizer, batches, pipeline, device, world_size: int):
    """cfg.train.steps steps; returns the per-window mean losses over the ranks (train.run's per-window loss
    all-reduce) and the seconds after warm-up."""
    window, losses, measured_start = [], [], None
    for step in range(1, cfg.train.steps + 1):
        if pipeline is not None:
            loss, _ = pipeline.progress(batches)
        else:
            optimizer.zero_grad()
            loss, _ = dmp(next(batches))
            loss.backward()
            optimizer.step()
        window.append(loss.detach())
        if step == cfg.train.warmup_steps:
            sync(device)
            measured_start = time.perf_counter()
        if step % cfg.run.log_every == 0 or step == cfg.train.steps:
            stacked = torch.stack(window)
            if world_size > 1:
                dist.all_reduce(stacked)
                stacked /= world_size
            losses.append(stacked.tolist())
            window = []
    sync(device)
    elapsed = time.perf_counter() - measured_start if measured_start is not None else float("nan")
    return losses, elapsed


def run_torchrec(
    cfg: Config,
    recfuse_plan: dict,
    rank: int,
    world_size: int,
    device: torch.device,
    port: int,
    plan_mode: str,
    pipelined: bool,
) -> dict:
    """Train and evaluate with TorchRec on its own process group; same protocol as train.run."""
    from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(
        backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    try:
        dmp, optimizer, torchrec_plan = build_torchrec(
            cfg, recfuse_plan, world_size, device, plan_mode
        )
        env = DistContext(rank, world_size, device)
        source = SyntheticSource(cfg, env)
        loader = source.train_batches()
        batches = (to_torchrec(b) for b in loader)
        pipeline = TrainPipelineSparseDist(dmp, optimizer, device) if pipelined else None
        losses, elapsed = train_steps(cfg, dmp, optimizer, batches, pipeline, device, world_size)
        loader.close()
        if pipeline is not None:
            pipeline.detach()  # restores the model's own forward for evaluation
        measured = cfg.train.steps - cfg.train.warmup_steps
        parts = SimpleNamespace(model=_EvalAdapter(dmp), embeddings=lambda kj: kj, data=source)
        eval_auc, eval_logloss = evaluate(cfg, parts, env)
        return {
            "samples_per_sec": measured * cfg.train.global_batch_size / elapsed,
            "eval_auc": eval_auc,
            "eval_logloss": eval_logloss,
            "final_loss": sum(losses[-1]) / len(losses[-1]),
            "losses": [x for w in losses for x in w],
            "plan": {
                k: {"sharding": v[0], "kernel": v[1], "ranks": v[2]}
                for k, v in torchrec_plan.items()
            },
            "pipeline": "TrainPipelineSparseDist" if pipelined else "none",
        }
    finally:
        dist.destroy_process_group()
