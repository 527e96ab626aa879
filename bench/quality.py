"""Model quality over seeds: trains one config once per seed (train.py in a subprocess) and reports eval AUC and
logloss as mean +- std at every evaluation point, so a recipe change is judged on more than one run.

    python bench/quality.py --config configs/tiny.toml --seeds 0,1,2 --out bench/results/quality_tiny -- --eval.every 50
    python bench/quality.py --config configs/dlrm_criteo_kaggle.toml --seeds 0,1,2 --world-size 2 \\
        -- --data.path DIR --eval.every_epoch true

    # every model (model.name values; 'all'), and the embedding dimension search's budget-vs-AUC curve
    python bench/quality.py --config configs/tiny.toml --seeds 0,1 --models all --out DIR -- --train.steps 200
    python bench/quality.py --config configs/tiny.toml --seeds 0,1 --keep 1,0.5,0.25,0.125 --out DIR

Arguments after ``--`` go to train.py unchanged; evaluation points come from train.py's eval.every (or
eval.every_epoch with a dataset) plus the final evaluation, read from each run's summary.json ("evals").
run.seed seeds the data (synthetic samples, dataset shuffling) as well as the weights, so the spread covers both.
std is the sample standard deviation over seeds (n - 1 in the denominator). Writes into --out: report.md
(the table, per-seed values, machine, date, commit), quality.png (mean with a +-std band, each seed thin),
quality.json (every seed's values and the table) and seed_<s>/ (each run's summary.json and metrics.jsonl).
--models writes one row per model (its final evaluation over seeds; runs in <model>/seed_<s>/), --keep one
row per budget (pretrain, pruned and retrained AUC; searches in seed_<s>/keep_<k>/, one pretrain per seed):
bench/quality_compare.py.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import quality_compare  # noqa: E402
from bench._common import git_commit  # noqa: E402
from models import ARCHITECTURES  # noqa: E402
from training import jsonio  # noqa: E402

METRICS = (("auc", "eval AUC"), ("logloss", "eval logloss"))


def host_cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            model = next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), ""
            )
    except OSError:
        model = ""
    return f"{model or platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def train_seed(config: str, seed: int, world_size: int, out_dir: str, extra: list[str]) -> dict:
    run_dir = os.path.join(out_dir, f"seed_{seed}")
    shutil.rmtree(run_dir, ignore_errors=True)
    launcher = (
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={world_size}",
        ]
        if world_size > 1
        else [sys.executable]
    )
    cmd = [
        *launcher,
        os.path.join(ROOT, "train.py"),
        "--config",
        config,
        *extra,
        "--run.seed",
        str(seed),
        "--run.dir",
        run_dir,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
    with open(os.path.join(run_dir, "summary.json")) as f:
        return json.load(f)


def points(runs: dict[int, dict]) -> list[dict]:
    """Mean and std over seeds at each evaluation step (every seed must have evaluated at the same steps)."""
    steps = {seed: [e["step"] for e in s["evals"]] for seed, s in runs.items()}
    first = next(iter(steps.values()))
    if any(s != first for s in steps.values()):
        raise ValueError(f"seeds evaluated at different steps: {steps}")
    some = next(iter(runs.values()))
    cfg = some["config"]
    # train.build set it to the epoch's steps
    per_epoch = cfg["eval"]["every"] if cfg["eval"].get("every_epoch") else 0
    out = []
    for i, step in enumerate(first):
        row = {
            "step": step,
            "samples": step * some["global_batch_size"],
            "epoch": step / per_epoch if per_epoch else None,
            "n": len(runs),
        }
        for key, _ in METRICS:
            values = [s["evals"][i][key] for s in runs.values()]
            row[f"{key}_mean"] = statistics.fmean(values)
            row[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else float("nan")
        out.append(row)
    return out


def markdown_table(rows: list[dict]) -> str:
    epochs = any(r["epoch"] is not None for r in rows)
    head = (
        "| step | "
        + ("epoch | " if epochs else "")
        + "samples | eval AUC (mean ± std) | eval logloss (mean ± std) | seeds |"
    )
    lines = [head, "|" + "---|" * len(head.strip("|").split("|"))]
    for r in rows:
        epoch = f"{r['epoch']:.2f} | " if epochs else ""
        lines.append(
            f"| {r['step']} | {epoch}{r['samples']} | {r['auc_mean']:.4f} ± {r['auc_std']:.4f} | "
            f"{r['logloss_mean']:.4f} ± {r['logloss_std']:.4f} | {r['n']} |"
        )
    return "\n".join(lines)


def plot(runs: dict[int, dict], rows: list[dict], path: str, title: str) -> None:
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (key, label) in zip(axes, METRICS, strict=True):
        for seed, s in runs.items():
            ax.plot(steps, [e[key] for e in s["evals"]], lw=0.7, alpha=0.5, label=f"seed {seed}")
        mean = [r[f"{key}_mean"] for r in rows]
        std = [r[f"{key}_std"] if len(runs) > 1 else 0.0 for r in rows]
        ax.plot(steps, mean, color="black", lw=2, marker="o", label="mean")
        ax.fill_between(
            steps,
            [m - s for m, s in zip(mean, std, strict=True)],
            [m + s for m, s in zip(mean, std, strict=True)],
            color="tab:blue",
            alpha=0.25,
            label="± std",
        )
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str], list[str]]:
    """The options, this script's own arguments (for the report's command line) and train.py's after ``--``."""
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="config TOML")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated run.seed values")
    parser.add_argument(
        "--world-size", type=int, default=1, help="processes per run (torchrun when > 1)"
    )
    parser.add_argument(
        "--out", required=True, help="directory for the report, plot, JSON and runs"
    )
    parser.add_argument(
        "--models", default="", help="comma-separated model.name values, or 'all': compare them"
    )
    parser.add_argument(
        "--keep", default="", help="comma-separated keep fractions: the dim search's budget curve"
    )
    parser.add_argument(
        "--search-args", default="", help="the dim search's own options, e.g. '--score-batches 20'"
    )
    return parser.parse_args(own), own, extra


def per_seed_table(runs: dict[int, dict], rows: list[dict]) -> list[str]:
    """Each seed's AUC at every evaluation point and its final loss."""
    lines = [
        "| seed | " + " | ".join(f"step {r['step']} AUC" for r in rows) + " | final loss |",
        "|---|" + "---|" * (len(rows) + 1),
    ]
    lines += [
        f"| {seed} | "
        + " | ".join(f"{e['auc']:.4f}" for e in s["evals"])
        + f" | {s['final_loss']:.4f} |"
        for seed, s in runs.items()
    ]
    return lines


def write_report(args, command: str, result: dict, runs: dict[int, dict], table: str) -> None:
    """report.md: the command, machine, date and commit, the mean +- std table, per-seed values and the plot."""
    n = len(result["seeds"])
    with open(os.path.join(args.out, "report.md"), "w") as f:
        f.write(
            f"# Quality: {args.config}\n\n`{command}`\n\n"
            f"Device {result['device']} (host: {result['host_cpu']}), W = {args.world_size}, "
            f"{result['date']}, commit {result['git_commit']}. Mean and sample std (n - 1) over {n} seeds; "
            f"run.seed seeds data and weights.\n\n{table}\n\nPer seed:\n\n"
            + "\n".join(per_seed_table(runs, result["points"]))
            + "\n\n"
            "![eval AUC and logloss over seeds](quality.png)\n"
        )


def seed_runs(args, seeds: list[int], out: str, extra: list[str]) -> dict[int, dict]:
    runs = {}
    for seed in seeds:
        runs[seed] = train_seed(args.config, seed, args.world_size, out, extra)
        last = runs[seed]["evals"][-1]
        print(
            f"seed {seed}: {len(runs[seed]['evals'])} evaluations, final eval auc {last['auc']:.4f}, "
            f"logloss {last['logloss']:.4f}",
            flush=True,
        )
    return runs


def machine(args, seeds: list[int], extra: list[str], device: str) -> dict:
    return {
        "config": args.config,
        "args": extra,
        "seeds": seeds,
        "world_size": args.world_size,
        "device": device,
        "host_cpu": host_cpu(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
    }


def compare(args, seeds: list[int], extra: list[str], command: str) -> dict:
    """--models or --keep: one row per model or per budget (bench/quality_compare.py)."""
    title = f"{os.path.basename(args.config)} {' '.join(extra)} | seeds {args.seeds}"
    if args.models:
        names = list(ARCHITECTURES) if args.models == "all" else args.models.split(",")
        rows, runs, table = quality_compare.compare_models(
            names,
            seeds,
            args.out,
            extra,
            lambda s, out, a: train_seed(args.config, s, args.world_size, out, a),
        )
        device = json.load(
            open(os.path.join(args.out, names[0], f"seed_{seeds[0]}", "summary.json"))
        )
        heading, plot_rows = f"Quality per model: {args.config}", quality_compare.plot_models
    else:
        keeps = [float(k) for k in args.keep.split(",")]
        opts = ["--world-size", str(args.world_size), *args.search_args.split()]
        rows, runs, table = quality_compare.search_curve(
            args.config, keeps, seeds, os.path.abspath(args.out), extra, opts
        )
        first = os.path.join(args.out, f"seed_{seeds[0]}", f"keep_{keeps[0]}", "report.json")
        device = json.load(open(first))
        heading, plot_rows = f"Dim search budget curve: {args.config}", quality_compare.plot_curve
    result = {**machine(args, seeds, extra, device["device"]), "rows": rows, "runs": runs}
    plot_rows(rows, os.path.join(args.out, "quality.png"), title)
    quality_compare.write(args.out, result, table, heading, command)
    print("\n".join(table))
    return result


def main(argv: list[str] | None = None) -> dict:
    args, own, extra = parse_args(sys.argv[1:] if argv is None else argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    os.makedirs(args.out, exist_ok=True)
    command = " ".join(["python bench/quality.py", *own, *(["--", *extra] if extra else [])])
    if args.models or args.keep:
        return compare(args, seeds, extra, command)
    runs = seed_runs(args, seeds, args.out, extra)
    rows = points(runs)
    some = next(iter(runs.values()))
    result = {
        **machine(args, seeds, extra, some["device"]),
        "points": rows,
        "runs": {
            str(seed): {
                "evals": s["evals"],
                "final_loss": s["final_loss"],
                "steps": s["steps"],
                "samples_per_sec": s["samples_per_sec"],
            }
            for seed, s in runs.items()
        },
    }
    with open(os.path.join(args.out, "quality.json"), "w") as f:
        jsonio.dump(result, f, indent=1)
    table = markdown_table(rows)
    title = f"{os.path.basename(args.config)} {' '.join(extra)} | seeds {args.seeds} | W={args.world_size}"
    plot(runs, rows, os.path.join(args.out, "quality.png"), title)
    write_report(args, command, result, runs, table)
    print(table)
    return result


if __name__ == "__main__":
    main()
