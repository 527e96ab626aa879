"""bench/quality.py's comparisons over seeds: every model (--models) on one config, and the embedding dimension
search's budget-vs-AUC curve (--keep). Each writes report.md, quality.json and quality.png into --out."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from training import jsonio  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# keys a model cannot run without (their defaults are invalid for it), as docs/training.md measured them
MODEL_ARGS = {"dcnmix": ("--model.cross_low_rank", "8")}
STAGES = ("pretrain", "pruned", "retrain")


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample std (n - 1); std NaN for one value."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else float("nan"))


def model_args(name: str, extra: list[str]) -> list[str]:
    out = ["--model.name", name]
    key_value = MODEL_ARGS.get(name)
    if key_value and key_value[0] not in extra:
        out += list(key_value)
    return out


def _cell(mean: float, std: float) -> str:
    return f"{mean:.4f} ± {std:.4f}"


def compare_models(
    models: list[str], seeds: list[int], out: str, extra: list[str], train: Callable
):
    """Every model over the seeds; train(seed, out_dir, extra) -> summary.json. Returns (rows, runs)."""
    rows, runs = [], {}
    for name in models:
        args = [*extra, *model_args(name, extra)]
        runs[name] = {s: train(s, os.path.join(out, name), args) for s in seeds}
        row = {"model": name, "args": model_args(name, extra), "n": len(seeds)}
        for key in ("auc", "logloss"):
            row[f"{key}_mean"], row[f"{key}_std"] = mean_std(
                [r["evals"][-1][key] for r in runs[name].values()]
            )
        row["steps"] = next(iter(runs[name].values()))["steps"]
        rows.append(row)
        print(f"{name}: eval AUC {_cell(row['auc_mean'], row['auc_std'])}", flush=True)
    table = [
        "| model | extra keys | steps | eval AUC (mean ± std) | eval logloss (mean ± std) | seeds |",
        "|---|---|---|---|---|---|",
    ]
    table += [
        f"| `{r['model']}` | {' '.join(r['args'][2:]) or '—'} | {r['steps']} | "
        f"{_cell(r['auc_mean'], r['auc_std'])} | {_cell(r['logloss_mean'], r['logloss_std'])} | {r['n']} |"
        for r in rows
    ]
    return (
        rows,
        {m: {str(s): r["evals"] for s, r in by_seed.items()} for m, by_seed in runs.items()},
        table,
    )


def _search(config, seed, keep, out, extra, pretrain: str, opts: list[str]) -> dict:
    cmd = [sys.executable, "-m", "training.dim_search", "--config", config, "--keep", str(keep)]
    cmd += ["--out", out, *opts] + (["--pretrain", pretrain] if pretrain else [])
    cmd += ["--", *extra, "--run.seed", str(seed)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
    with open(os.path.join(out, "report.json")) as f:
        return json.load(f)


def search_curve(config, keeps, seeds, out, extra, opts: list[str]):
    """The search at each keep for each seed (one pretrain per seed, reused by the other keeps); opts: the
    search's own options (--world-size, --score-batches, --no-retrain)."""
    reports = {k: {} for k in keeps}
    for seed in seeds:
        first = ""
        for keep in keeps:
            where = os.path.join(out, f"seed_{seed}", f"keep_{keep}")
            reports[keep][seed] = _search(config, seed, keep, where, extra, first, opts)
            first = first or os.path.join(where, "pretrain")
            stages = reports[keep][seed]["stages"]
            print(
                f"seed {seed} keep {keep}: "
                + ", ".join(f"{s} AUC {stages[s]['auc']:.4f}" for s in STAGES if stages[s]),
                flush=True,
            )
    rows = []
    for keep in keeps:
        some = next(iter(reports[keep].values()))
        row = {"keep": keep, "n": len(seeds), "parameters": some["parameters"]}
        row["dims"] = {
            str(s): {t["name"]: t["dim"] for t in r["tables"]} for s, r in reports[keep].items()
        }
        for stage in STAGES:
            for key in ("auc", "logloss"):
                values = [
                    r["stages"][stage][key] for r in reports[keep].values() if r["stages"][stage]
                ]
                row[f"{stage}_{key}"] = mean_std(values) if values else None
        rows.append(row)
    head = "| keep | parameters kept (seed " + str(seeds[0]) + ") | "
    head += " | ".join(f"{s} AUC" for s in STAGES) + " | retrain logloss | seeds |"
    table = [head, "|---|---|" + "---|" * (len(STAGES) + 2)]
    for r in rows:
        cells = [_cell(*r[f"{s}_auc"]) if r[f"{s}_auc"] else "—" for s in STAGES]
        loss = _cell(*r["retrain_logloss"]) if r["retrain_logloss"] else "—"
        p = r["parameters"]
        table.append(
            f"| {r['keep']} | {p['kept']:,} / {p['full']:,} | {' | '.join(cells)} | {loss} | {r['n']} |"
        )
    return (
        rows,
        {str(k): {str(s): r["stages"] for s, r in v.items()} for k, v in reports.items()},
        table,
    )


def plot_models(rows: list[dict], path: str, title: str) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label in zip(axes, ("auc", "logloss"), ("eval AUC", "eval logloss"), strict=True):
        names = [r["model"] for r in rows]
        ax.errorbar(
            names, [r[f"{key}_mean"] for r in rows], [r[f"{key}_std"] for r in rows], fmt="o"
        )
        ax.set_ylabel(f"final {label} (mean ± std over seeds)")
        ax.tick_params(axis="x", rotation=45)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curve(rows: list[dict], path: str, title: str) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    keeps = [r["keep"] for r in rows]
    for stage in STAGES:
        found = [
            (k, r[f"{stage}_auc"]) for k, r in zip(keeps, rows, strict=True) if r[f"{stage}_auc"]
        ]
        if found:
            ax.errorbar(
                [k for k, _ in found],
                [m for _, (m, _) in found],
                [s for _, (_, s) in found],
                fmt="o-",
                capsize=3,
                label=stage,
            )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("keep (fraction of embedding parameters)")
    ax.set_ylabel("eval AUC (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(out: str, result: dict, table: list[str], heading: str, command: str) -> None:
    with open(os.path.join(out, "quality.json"), "w") as f:
        jsonio.dump(result, f, indent=1)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(
            f"# {heading}\n\n`{command}`\n\nDevice {result['device']} (host: {result['host_cpu']}), "
            f"W = {result['world_size']}, {result['date']}, commit {result['git_commit']}. Final "
            f"evaluation, mean and sample std (n - 1) over seeds {result['seeds']}; run.seed seeds data "
            "and weights.\n\n" + "\n".join(table) + "\n\n![quality](quality.png)\n"
        )
