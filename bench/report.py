"""Render e2e results (bench/e2e.py) into a markdown table and PNG plots, in the same directory.

    python bench/report.py bench/results/e2e_cpu [--alltoall-jsonl bench/results/alltoall.jsonl]

Writes report.md, throughput.png (samples/s vs world size), stages.png (per-step stage times) and
mfu.png. With an all-to-all bandwidth measurement, the report also projects W > 1 throughput from
the W = 1 run (bench/scaling.py) beside the measured W > 1 runs.
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
from bench.scaling import busbw_from_jsonl, project  # noqa: E402

STAGE_ORDER = ("data", "h2d", "input_dist", "embedding_fwd", "dense_fwd", "backward", "dense_optimizer")


def load(directory: str) -> list[dict]:
    runs = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(directory, "e2e_*.json")))]
    if not runs:
        raise SystemExit(f"no e2e_*.json results in {directory}")
    return sorted(runs, key=lambda r: (r["config"], r["world_size"]))


def scaling_stages(stage_ms: dict, shrink: float) -> dict:
    """Map train.py's stages to bench/scaling.py's; embedding backward is inside 'backward'."""
    return {"data": stage_ms.get("data", 0.0) * shrink, "input_dist": stage_ms.get("input_dist", 0.0) * shrink,
            "lookup": stage_ms.get("embedding_fwd", 0.0) * shrink, "output_dist": 0.0,
            "dense_fwd_bwd": (stage_ms.get("dense_fwd", 0.0) + stage_ms.get("backward", 0.0)) * shrink,
            "optimizer": stage_ms.get("dense_optimizer", 0.0) * shrink}


def projections(runs: list[dict], alltoall_jsonl: str | None) -> dict:
    """Strong-scaling projection of each W > 1 run from its config's W = 1 run (stage times / W)."""
    if not alltoall_jsonl or not os.path.exists(alltoall_jsonl):
        return {}
    base = {r["config"]: r for r in runs if r["world_size"] == 1}
    out = {}
    for r in runs:
        one = base.get(r["config"])
        if r["world_size"] == 1 or one is None:
            continue
        s, w = r["summary"], r["world_size"]
        bw = busbw_from_jsonl(alltoall_jsonl, s["exchange_bytes_per_rank"] / 3 or 1)
        out[r["name"]] = project(scaling_stages(one["summary"]["stage_ms"], 1.0 / w), s["exchange_bytes_per_rank"],
                                 s["allreduce_bytes"], s["local_batch"], w, bw, bw, overlap=False)
    return out


def write_markdown(runs: list[dict], projected: dict, path: str) -> None:
    lines = ["| run | device | W | samples/s | projected samples/s | step ms | data wait % | MFU % | "
             "emb GB/s | a2a kB/step/rank | eval AUC | final loss | commit |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        s, last = r["summary"], r["metrics"][-1]
        proj = projected.get(r["name"], {}).get("samples_per_s")
        mfu = s.get("mfu_pct")
        lines.append(f"| {r['name']} | {r['device']} | {r['world_size']} | {s['samples_per_sec']:.0f} | "
                     f"{f'{proj:.0f}' if proj else '-'} | {sum(s['stage_ms'].values()):.2f} | {last['data_wait_pct']:.1f} | "
                     f"{f'{mfu:.2f}' if mfu is not None else '-'} | {last['embedding_gbps']:.3f} | "
                     f"{s['exchange_bytes_per_rank'] / 1e3:.1f} | {s['eval_auc']:.4f} | {s['final_loss']:.4f} | "
                     f"{r['git_commit'][:8]} |")
    notes = ["", "samples/s: global, after warm-up. Stage times are per step, summed over train.py's stages "
             "(data, h2d, input_dist, embedding_fwd, dense_fwd, backward incl. exchange + sparse update, dense_optimizer).",
             "Projected: bench/scaling.py from the W=1 run's stage times divided by W (fixed global batch), plus "
             "all-to-all and all-reduce times at the measured all-to-all busbw, no overlap." if projected else ""]
    with open(path, "w") as f:
        f.write("\n".join(lines + notes) + "\n")


def plot(runs: list[dict], directory: str) -> None:
    configs = sorted({r["config"] for r in runs})
    fig, ax = plt.subplots(figsize=(6, 4))
    for c in configs:
        rs = [r for r in runs if r["config"] == c]
        ax.plot([r["world_size"] for r in rs], [r["summary"]["samples_per_sec"] for r in rs], marker="o",
                label=os.path.basename(c))
    ax.set(xlabel="world size", ylabel="samples/s (global)", title="Throughput vs world size")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(directory, "throughput.png"), dpi=120)

    fig, ax = plt.subplots(figsize=(7, 4))
    names = [r["name"] for r in runs]
    bottom = [0.0] * len(runs)
    for stage in STAGE_ORDER:
        values = [r["summary"]["stage_ms"].get(stage, 0.0) for r in runs]
        ax.bar(names, values, bottom=bottom, label=stage)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set(ylabel="ms per step", title="Stage time per step")
    ax.legend(fontsize=8)
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    fig.savefig(os.path.join(directory, "stages.png"), dpi=120)

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(names, [r["summary"].get("mfu_pct") or 0.0 for r in runs])
    ax.set(ylabel="dense MFU %", title="Model FLOPs utilization")
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    fig.savefig(os.path.join(directory, "mfu.png"), dpi=120)
    plt.close("all")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory")
    parser.add_argument("--alltoall-jsonl", default=os.path.join(os.path.dirname(__file__), "results", "alltoall.jsonl"))
    args = parser.parse_args(argv)
    runs = load(args.directory)
    write_markdown(runs, projections(runs, args.alltoall_jsonl), os.path.join(args.directory, "report.md"))
    plot(runs, args.directory)
    print(open(os.path.join(args.directory, "report.md")).read())


if __name__ == "__main__":
    main()
