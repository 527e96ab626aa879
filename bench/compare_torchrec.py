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
from dataclasses import dataclass

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import train  # noqa: E402
from bench._common import git_commit  # noqa: E402
from bench.torchrec_side import quiet_torchrec, run_torchrec  # noqa: E402
from embedding import resolve_tables  # noqa: E402
from training.build import sharding_plan  # noqa: E402
from training.config import Config, load_config  # noqa: E402
from training.jsonio import write_json_atomic  # noqa: E402

INSTALL = (
    "pip install --no-deps torchrec==1.8.0 fbgemm-gpu-cpu==1.8.0 tensordict==0.15.3 pyvers==0.2.3 "
    "pyre-extensions==0.0.32 typing-inspect==0.9.0 mypy-extensions==1.2.0 cloudpickle==3.1.2\n"
    "  (for torch 2.13; --no-deps keeps pip from replacing torch; on CUDA fbgemm-gpu==1.8.0 instead of fbgemm-gpu-cpu)"
)


def torchrec_missing() -> str | None:
    """None when TorchRec and its kernels import, else the import error."""
    try:
        import fbgemm_gpu  # noqa: F401
        import torchrec  # noqa: F401
        from torchrec.distributed import DistributedModelParallel  # noqa: F401
    except Exception as e:  # ImportError, or an OSError from fbgemm's shared library
        return f"{type(e).__name__}: {e}"
    return None


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


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """This script's options, and the RecFuse config overrides after ``--``."""
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
    return parser.parse_args(own), overrides


def write_report(
    args, overrides: list[str], cfg: Config, opts: Options, results: list[dict], load_before: float
) -> None:
    """The result JSON: versions, machine, load, the settings and every world size's results."""
    import fbgemm_gpu
    import torchrec

    device = opts.device
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


def main(argv: list[str] | None = None) -> list[dict]:
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
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
    write_report(args, overrides, cfg, opts, results, load_before)
    return results


if __name__ == "__main__":
    main()
