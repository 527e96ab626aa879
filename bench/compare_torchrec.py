"""RecFuse vs TorchRec's DistributedModelParallel on the same model, data and optimizers (docs/torchrec.md).

    python bench/compare_torchrec.py                       # configs/tiny.toml at W = 1 and 2, CPU + gloo
    python bench/compare_torchrec.py --world-sizes 1,2,4 --out /tmp/cmp.json -- --train.steps 100

Arguments after ``--`` are RecFuse config overrides, applied to both systems. Per world size and repeat, one
group of freshly spawned processes runs ``train.run`` and the same training with TorchRec, in alternating order.
Both take gradients of the global mean loss (TorchRec divides sharded tables' gradients by W in its all-to-all
backward, RecFuse scales by 1/W, DDP averages), so at W = 1 they agree to fp32 round-off step for step.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import socket
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from types import SimpleNamespace

import torch
import torch.distributed as dist
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import train  # noqa: E402
from bench._common import git_commit  # noqa: E402
from embedding import EmbeddingCollection, SparseOptimizer, resolve_tables  # noqa: E402
from models import build_model  # noqa: E402
from training.build import sharding_plan  # noqa: E402
from training.config import Config, load_config  # noqa: E402
from training.data import SyntheticSource  # noqa: E402
from training.distributed import DistContext  # noqa: E402
from training.evaluate import evaluate  # noqa: E402
from training.metrics import write_json_atomic  # noqa: E402

INSTALL = (
    "pip install --no-deps torchrec==1.8.0 fbgemm-gpu-cpu==1.8.0 tensordict==0.15.3 pyvers==0.2.3 "
    "pyre-extensions==0.0.32 typing-inspect==0.9.0 mypy-extensions==1.2.0 cloudpickle==3.1.2\n"
    "  (for torch 2.13; --no-deps keeps pip from replacing torch; on CUDA fbgemm-gpu==1.8.0 instead of fbgemm-gpu-cpu)"
)
MIRROR = {"replicated": ["data_parallel"], "table": ["table_wise"], "row": ["row_wise"]}
# TorchRec 1.8 on CPU: no row-wise
CPU_SHARDINGS = ["table_wise", "column_wise", "table_column_wise"]


def torchrec_missing() -> str | None:
    """None when TorchRec and its kernels import, else the import error."""
    try:
        import fbgemm_gpu  # noqa: F401
        import torchrec  # noqa: F401
        from torchrec.distributed import DistributedModelParallel  # noqa: F401
    except Exception as e:  # ImportError, or an OSError from fbgemm's shared library
        return f"{type(e).__name__}: {e}"
    return None


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


def build_torchrec(
    cfg: Config, recfuse_plan: dict, world_size: int, device: torch.device, plan_mode: str
):
    """DMP model, its combined optimizer and TorchRec's plan {table: (sharding type, kernel, ranks)}."""
    from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, PoolingType
    from torchrec.distributed import DistributedModelParallel
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints
    from torchrec.distributed.planner.types import KernelConfig, TopologyFactory, TrainerConfig
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
    from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
    from torchrec.optim.optimizers import in_backward_optimizer_filter

    tables, o = resolve_tables(cfg.embedding), cfg.optimizer
    features = [f for t in tables for f in t.features]
    ebc = EmbeddingBagCollection(
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
    sparse_cls = sparse_optimizer(o.sparse)
    sparse_kwargs = {"lr": o.sparse_lr, **({"eps": o.eps} if o.sparse == "adagrad" else {})}
    # sharding pops keys from it
    apply_optimizer_in_backward(sparse_cls, ebc.parameters(), dict(sparse_kwargs))

    constraints = None
    if plan_mode == "mirror":
        cpu = device.type == "cpu"
        constraints = {
            name: ParameterConstraints(
                sharding_types=CPU_SHARDINGS if cpu and kind == "row" else MIRROR[kind]
            )
            for name, kind in recfuse_plan.items()
        }
    topology = TopologyFactory.create_topology(
        TrainerConfig(world_size=world_size, local_world_size=world_size),
        kernel_config=KernelConfig(compute_device=device.type),
    )
    sharders = [EmbeddingBagCollectionSharder()]
    torch.manual_seed(cfg.run.seed)  # the dense init of training.build
    dense = build_model(
        cfg.model, cfg.data.num_dense, len(features), cfg.embedding.dim, seed=cfg.run.seed
    ).to(device)
    model = TorchRecRanker(ebc, dense, features, cfg.train.bf16 and device.type == "cuda")
    plan = EmbeddingShardingPlanner(topology=topology, constraints=constraints).collective_plan(
        model, sharders, dist.GroupMember.WORLD
    )
    torchrec_plan = {
        name: (p.sharding_type, p.compute_kernel, p.ranks)
        for ps in plan.plan.values()
        for name, p in ps.items()
    }
    dmp = DistributedModelParallel(model, device=device, plan=plan, sharders=sharders)
    copy_initial_rows(dmp, tables, cfg.run.seed)

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
    return dmp, CombinedOptimizer(optimizers), torchrec_plan


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
            # train.run's per-window loss all-reduce
            if step % cfg.run.log_every == 0 or step == cfg.train.steps:
                stacked = torch.stack(window)
                if world_size > 1:
                    dist.all_reduce(stacked)
                    stacked /= world_size
                losses.append(stacked.tolist())
                window = []
        sync(device)
        elapsed = (
            time.perf_counter() - measured_start if measured_start is not None else float("nan")
        )
        loader.close()
        if pipeline is not None:
            pipeline.detach()  # restores the model's own forward for evaluation
        measured = cfg.train.steps - cfg.train.warmup_steps
        parts = SimpleNamespace(model=_EvalAdapter(dmp), embeddings=lambda kj: kj, data=source)
        eval_auc, eval_logloss = evaluate(cfg, parts, env)
        flat = [x for w in losses for x in w]
        return {
            "samples_per_sec": measured * cfg.train.global_batch_size / elapsed,
            "eval_auc": eval_auc,
            "eval_logloss": eval_logloss,
            "final_loss": sum(losses[-1]) / len(losses[-1]),
            "losses": flat,
            "plan": {
                k: {"sharding": v[0], "kernel": v[1], "ranks": v[2]}
                for k, v in torchrec_plan.items()
            },
            "pipeline": "TrainPipelineSparseDist" if pipelined else "none",
        }
    finally:
        dist.destroy_process_group()


def run_recfuse(cfg: Config, run_dir: str) -> dict:
    cfg = copy.deepcopy(cfg)
    cfg.run.dir = run_dir
    summary = train.run(cfg)
    # rank 0 writes it; the other ranks' results are unused
    metrics = os.path.join(run_dir, "metrics.jsonl")
    lines = [json.loads(line) for line in open(metrics)] if os.path.exists(metrics) else []
    return {
        "samples_per_sec": summary["samples_per_sec"],
        "eval_auc": summary["eval_auc"],
        "eval_logloss": summary["eval_logloss"],
        "final_loss": summary["final_loss"],
        "losses": [x for line in lines for x in line["losses"]],
        "plan": summary["plan"],
    }


# ---- processes --------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Options:
    device: str = "cpu"  # "cpu" (gloo) or "cuda" (nccl)
    plan: str = "mirror"  # TorchRec sharding: "mirror" RecFuse's placements, or "planner"
    pipelined: bool = True  # TorchRec through TrainPipelineSparseDist
    repeats: int = 1  # runs of each system, each in fresh processes; samples/s is their median
    threads: int = 1  # torch threads per rank
    ports: tuple[int, int] = (0, 0)  # process-group ports of the RecFuse and the TorchRec run


def recfuse_placements(cfg: Config, world_size: int) -> dict[str, str]:
    """{table: placement} of RecFuse's planner."""
    plan = sharding_plan(cfg, resolve_tables(cfg.embedding), world_size)
    return {name: p.placement for name, p in plan.placements.items()}


def worker(
    rank: int, world_size: int, cfg: Config, opts: Options, repeat: int, out_dir: str
) -> None:
    """One run of each system on this rank (spawned); rank 0 saves both results."""
    quiet_torchrec()
    # train.run's env:// rendezvous
    os.environ.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(opts.ports[0]),
            "RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "LOCAL_RANK": str(rank),
        }
    )
    torch.set_num_threads(opts.threads)
    device = torch.device("cuda", rank) if opts.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    cfg = copy.deepcopy(cfg)
    cfg.run.device = device.type
    runs = {}
    # no order bias
    for system in ("recfuse", "torchrec") if repeat % 2 == 0 else ("torchrec", "recfuse"):
        if system == "recfuse":
            runs[system] = run_recfuse(cfg, os.path.join(out_dir, f"recfuse_{repeat}"))
        else:
            runs[system] = run_torchrec(
                cfg,
                recfuse_placements(cfg, world_size),
                rank,
                world_size,
                device,
                opts.ports[1],
                opts.plan,
                opts.pipelined,
            )
    if rank == 0:
        torch.save(runs, os.path.join(out_dir, f"run_{repeat}.pt"))


def summarize(runs: list[dict]) -> dict:
    """First run's metrics (training is deterministic) with the median samples/s over the runs."""
    return {
        **runs[0],
        "samples_per_sec": statistics.median(r["samples_per_sec"] for r in runs),
        "samples_per_sec_runs": [r["samples_per_sec"] for r in runs],
    }


def compare(cfg: Config, world_size: int, opts: Options | None = None) -> dict:
    """Both systems at one world size, each repeat in a fresh group of spawned processes."""
    import torch.multiprocessing as mp

    if cfg.data.path:
        raise ValueError(
            f"data.path={cfg.data.path!r}: the TorchRec comparison runs on synthetic data only (drop data.path)"
        )
    opts = copy.copy(opts or Options())
    # all cores split over the ranks (torchrun's OMP_NUM_THREADS=1 on 2 cores at W=2), the same for both systems
    opts.threads = max(1, (os.cpu_count() or 1) // world_size) if opts.device == "cpu" else 1
    runs = []
    with tempfile.TemporaryDirectory() as out_dir:
        for repeat in range(opts.repeats):
            opts.ports = (free_port(), free_port())
            mp.spawn(
                worker, args=(world_size, cfg, opts, repeat, out_dir), nprocs=world_size, join=True
            )
            runs.append(torch.load(os.path.join(out_dir, f"run_{repeat}.pt"), weights_only=False))
    recfuse, torchrec = (
        summarize([r["recfuse"] for r in runs]),
        summarize([r["torchrec"] for r in runs]),
    )
    return {
        "world_size": world_size,
        "threads_per_rank": opts.threads,
        "recfuse": recfuse,
        "torchrec": torchrec,
        "ratio_recfuse_over_torchrec": recfuse["samples_per_sec"] / torchrec["samples_per_sec"],
    }


# ---- report -----------------------------------------------------------------------------------------------
def format_table(results: list[dict]) -> str:
    header = (
        f"{'system':<9} {'W':>2} {'samples/s':>11} {'eval AUC':>9} {'final loss':>10}  sharding"
    )
    lines = [header, "-" * 100]
    for r in results:
        rf, tr = r["recfuse"], r["torchrec"]
        kinds = sorted({v["sharding"] + "/" + v["kernel"] for v in tr["plan"].values()})
        rows = [
            ("RecFuse", rf, ", ".join(sorted(set(rf["plan"].values())))),
            ("TorchRec", tr, ", ".join(kinds)),
        ]
        for name, s, sharding in rows:
            lines.append(
                f"{name:<9} {r['world_size']:>2} {s['samples_per_sec']:>11.0f} {s['eval_auc']:>9.4f} "
                f"{s['final_loss']:>10.4f}  {sharding}"
            )
    lines.append("-" * 100)
    lines += [
        f"W={r['world_size']}: RecFuse/TorchRec samples/s = {r['ratio_recfuse_over_torchrec']:.2f}x"
        for r in results
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    argv = sys.argv[1:] if argv is None else argv
    overrides = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=os.path.join(ROOT, "configs", "tiny.toml"))
    parser.add_argument("--world-sizes", default="1,2", help="comma-separated process counts")
    parser.add_argument(
        "--device", default="auto", choices=["auto", "cpu", "cuda"], help="cuda uses nccl, cpu gloo"
    )
    parser.add_argument(
        "--torchrec-plan",
        default="mirror",
        choices=["mirror", "planner"],
        help="mirror: RecFuse's placement per table; planner: TorchRec's planner decides",
    )
    parser.add_argument(
        "--no-torchrec-pipeline",
        action="store_true",
        help="step TorchRec without TrainPipelineSparseDist (no input_dist overlap)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="alternating runs per system; report the median samples/s",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="result JSON (default bench/results/compare_torchrec_<device>.json)",
    )
    parser.add_argument("--date", default=datetime.date.today().isoformat())
    args = parser.parse_args(own)
    missing = torchrec_missing()
    if missing:
        print(
            f"TorchRec is not importable ({missing}).\nInstall it next to torch (no torch upgrade):\n  {INSTALL}",
            file=sys.stderr,
        )
        raise SystemExit(2)
    device = (
        "cuda"
        if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
        else "cpu"
    )
    cfg = load_config(["--config", args.config, *overrides])
    opts = Options(device, args.torchrec_plan, not args.no_torchrec_pipeline, args.repeats)
    # other processes on the machine skew samples/s: recorded with the result
    load_before = os.getloadavg()[0]
    results = [compare(cfg, int(w), opts) for w in args.world_sizes.split(",")]
    print(format_table(results), flush=True)
    import fbgemm_gpu
    import torchrec

    label = torch.cuda.get_device_name() if device == "cuda" else f"cpu ({os.cpu_count()} cores)"
    report = {
        "bench": "compare_torchrec",
        "date": args.date,
        "device": label,
        "git_commit": git_commit(),
        "config": os.path.relpath(args.config, ROOT),
        "overrides": overrides,
        "torch": torch.__version__,
        "torchrec": torchrec.__version__,
        "fbgemm_gpu": fbgemm_gpu.__version__,
        "torchrec_plan": args.torchrec_plan,
        "torchrec_pipeline": opts.pipelined,
        "repeats": args.repeats,
        "loadavg_1min_before_after": [load_before, os.getloadavg()[0]],
        "steps": cfg.train.steps,
        "warmup_steps": cfg.train.warmup_steps,
        "global_batch_size": cfg.train.global_batch_size,
        "results": results,
    }
    out = args.out or os.path.join(ROOT, "bench", "results", f"compare_torchrec_{device}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    write_json_atomic(out, report)
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
