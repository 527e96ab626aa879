"""Render e2e results (bench/e2e.py) into a markdown table and PNG plots, in the same directory.

    python bench/report.py bench/results/e2e_cpu

Writes report.md (throughput table and per-stage table), throughput.png (samples/s vs world size),
stages.png (per-step stage times, training.stages.STAGES) and mfu.png: measured runs only. It projects
nothing: a W > 1 step cannot be projected from a W = 1 run, which does none of the W > 1 work (no dedup,
no exchange, the fused single-rank backward); bench/local_work.py + bench/scaling.py project from a
measured W > 1 run.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from training.stages import EXCHANGE_STAGES, OVERLAPPED_STAGES, STAGES  # noqa: E402


def load(directory: str) -> list[dict]:
    runs = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(directory, "e2e_*.json")))]
    if not runs:
        raise SystemExit(f"no e2e_*.json results in {directory}")
    return sorted(runs, key=lambda r: (r["config"], r["world_size"]))


def step_ms(summary: dict) -> float:
    """Wall-clock ms per step after warm-up."""
    return 1e3 * summary["global_batch_size"] / summary["samples_per_sec"]


def throughput_table(runs: list[dict]) -> list[str]:
    """One row per run: samples/s, step time, data wait, MFU, bytes, quality."""
    lines = [
        "| run | device | W | samples/s | step ms | data wait % | MFU % | emb GB/s | a2a kB/step/rank | "
        "eval AUC | final loss | commit |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        s, last = r["summary"], r["metrics"][-1]
        mfu = s.get("mfu_pct")
        lines.append(
            f"| {r['name']} | {r['device']} | {r['world_size']} | {s['samples_per_sec']:.0f} | "
            f"{step_ms(s):.2f} | {100 * s['stage_ms']['data_wait'] / step_ms(s):.1f} | "
            f"{f'{mfu:.2f}' if mfu is not None else '-'} | {last['embedding_gbps']:.3f} | "
            f"{s['exchange_bytes_per_rank'] / 1e3:.1f} | {s['eval_auc']:.4f} | {s['final_loss']:.4f} | "
            f"{r['git_commit'][:8]} |"
        )
    return lines


def stage_table(runs: list[dict]) -> list[str]:
    """Per-stage ms of every run, with the exchange stages' sum and the step's path."""
    lines = [
        "Stage times, ms per step after warm-up (training.stages.STAGES; exchange = input_dist + "
        "output_dist + grad_dist; path = the stages but h2d):",
        "",
        "| run | " + " | ".join(STAGES) + " | exchange | path | wall |",
        "|---" * (len(STAGES) + 4) + "|",
    ]
    for r in runs:
        stage_ms = r["summary"]["stage_ms"]
        cells = [f"{stage_ms[k]:.2f}" for k in STAGES] + [
            f"{sum(stage_ms[k] for k in EXCHANGE_STAGES):.2f}",
            f"{sum(stage_ms[k] for k in STAGES if k not in OVERLAPPED_STAGES):.2f}",
            f"{step_ms(r['summary']):.2f}",
        ]
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    return lines


def write_markdown(runs: list[dict], path: str) -> None:
    lines = [*throughput_table(runs), "", *stage_table(runs)]
    notes = [
        "",
        "samples/s: global, after warm-up; step ms: wall clock per step after warm-up; data wait %: "
        "data_wait / step ms. Stages are timed with CUDA events on GPU and the wall clock on CPU; dense_bwd is "
        "loss.backward() without grad_dist and sparse_update (with DDP it holds the exposed all-reduce). "
        "Every figure is measured; projections to more GPUs: bench/local_work.py + bench/scaling.py.",
    ]
    with open(path, "w") as f:
        f.write("\n".join(lines + notes) + "\n")


def plot(runs: list[dict], directory: str) -> None:
    configs = sorted({r["config"] for r in runs})
    fig, ax = plt.subplots(figsize=(6, 4))
    for c in configs:
        rs = [r for r in runs if r["config"] == c]
        ax.plot(
            [r["world_size"] for r in rs],
            [r["summary"]["samples_per_sec"] for r in rs],
            marker="o",
            label=os.path.basename(c),
        )
    ax.set(xlabel="world size", ylabel="samples/s (global)", title="Throughput vs world size")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(directory, "throughput.png"), dpi=120)

    fig, ax = plt.subplots(figsize=(9, 4.5))
    names = [r["name"] for r in runs]
    bottom = [0.0] * len(runs)
    for i, stage in enumerate(STAGES):
        values = [r["summary"]["stage_ms"].get(stage, 0.0) for r in runs]
        ax.bar(names, values, bottom=bottom, label=stage, color=plt.cm.tab20(i))
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set(ylabel="ms per step", title="Stage time per step (h2d: side stream, overlapped on GPU)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    fig.savefig(os.path.join(directory, "stages.png"), dpi=120)

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar([r["name"] for r in runs], [r["summary"].get("mfu_pct") or 0.0 for r in runs])
    ax.set(ylabel="dense MFU %", title="Model FLOPs utilization")
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    fig.savefig(os.path.join(directory, "mfu.png"), dpi=120)
    plt.close("all")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("directory")
    args = parser.parse_args(argv)
    runs = load(args.directory)
    write_markdown(runs, os.path.join(args.directory, "report.md"))
    plot(runs, args.directory)
    print(open(os.path.join(args.directory, "report.md")).read())


if __name__ == "__main__":
    main()
