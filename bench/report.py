"""Render e2e results (bench/e2e.py) into a markdown table and PNG plots, in the same directory.

    python bench/report.py bench/results/e2e_cpu [--alltoall-jsonl bench/results/alltoall.jsonl]

Writes report.md (throughput table and per-stage table), throughput.png (samples/s vs world size),
stages.png (per-step stage times, training.stages.STAGES) and mfu.png. With an all-to-all bandwidth
measurement, the report also projects each W > 1 run from the W = 1 run (bench/scaling.py), stage by
stage, beside the measured W > 1 runs.
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
from bench.scaling import ALLTOALLS_PER_STEP, busbw_from_jsonl, project  # noqa: E402
from training.stages import EXCHANGE_STAGES, OVERLAPPED_STAGES, STAGES  # noqa: E402

# communication a projection adds to the stages
PROJECTED_EXTRA = ("alltoall_ms", "exposed_allreduce_ms")


def load(directory: str) -> list[dict]:
    runs = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(directory, "e2e_*.json")))]
    if not runs:
        raise SystemExit(f"no e2e_*.json results in {directory}")
    return sorted(runs, key=lambda r: (r["config"], r["world_size"]))


def step_ms(summary: dict) -> float:
    """Wall-clock ms per step after warm-up."""
    return 1e3 * summary["global_batch_size"] / summary["samples_per_sec"]


def projections(runs: list[dict], alltoall_jsonl: str | None) -> dict:
    """Strong-scaling projection of each W > 1 run from its config's W = 1 run: every stage time / W (fixed
    global batch; at W = 1 the exchange stages hold only local work), plus the all-to-all of the run's measured
    bytes and the all-reduce at the measured all-to-all busbw. Returns name -> project() result + "stage_ms"."""
    if not alltoall_jsonl or not os.path.exists(alltoall_jsonl):
        return {}
    base = {r["config"]: r for r in runs if r["world_size"] == 1}
    out = {}
    for r in runs:
        one = base.get(r["config"])
        if r["world_size"] == 1 or one is None:
            continue
        s, w = r["summary"], r["world_size"]
        bw = busbw_from_jsonl(
            alltoall_jsonl, s["exchange_bytes_per_rank"] / ALLTOALLS_PER_STEP or 1
        )
        stages = {k: one["summary"]["stage_ms"][k] / w for k in STAGES}
        out[r["name"]] = {
            **project(
                stages,
                s["exchange_bytes_per_rank"],
                s["allreduce_bytes"],
                s["local_batch"],
                w,
                bw,
                bw,
                overlap=False,
            ),
            "stage_ms": stages,
        }
    return out


def _stage_row(
    label: str, stage_ms: dict, communication: list[str], exchange: float, path: float, wall: str
) -> str:
    cells = (
        [f"{stage_ms[k]:.2f}" for k in STAGES]
        + communication
        + [f"{exchange:.2f}", f"{path:.2f}", wall]
    )
    return f"| {label} | " + " | ".join(cells) + " |"


def throughput_table(runs: list[dict], projected: dict) -> list[str]:
    """One row per run: samples/s (measured and projected), step time, data wait, MFU, bytes, quality."""
    lines = [
        "| run | device | W | samples/s | projected samples/s | step ms | data wait % | MFU % | "
        "emb GB/s | a2a kB/step/rank | eval AUC | final loss | commit |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        s, last = r["summary"], r["metrics"][-1]
        proj = projected.get(r["name"], {}).get("samples_per_s")
        mfu = s.get("mfu_pct")
        lines.append(
            f"| {r['name']} | {r['device']} | {r['world_size']} | {s['samples_per_sec']:.0f} | "
            f"{f'{proj:.0f}' if proj else '-'} | {step_ms(s):.2f} | "
            f"{100 * s['stage_ms']['data_wait'] / step_ms(s):.1f} | "
            f"{f'{mfu:.2f}' if mfu is not None else '-'} | {last['embedding_gbps']:.3f} | "
            f"{s['exchange_bytes_per_rank'] / 1e3:.1f} | {s['eval_auc']:.4f} | {s['final_loss']:.4f} | "
            f"{r['git_commit'][:8]} |"
        )
    return lines


def stage_table(runs: list[dict], projected: dict) -> list[str]:
    """Per-stage ms of every run, each projected run right below its measured one."""
    lines = [
        "Stage times, ms per step after warm-up (training.stages.STAGES; exchange = input_dist + "
        "output_dist + grad_dist; path = stages without h2d, plus projected communication):",
        "",
        "| run | "
        + " | ".join(STAGES)
        + " | a2a (proj.) | all-reduce (proj.) | exchange | path | wall |",
        "|---" * (len(STAGES) + 5) + "|---|",
    ]
    for r in runs:
        s = r["summary"]
        lines.append(
            _stage_row(
                r["name"],
                s["stage_ms"],
                ["-", "-"],
                sum(s["stage_ms"][k] for k in EXCHANGE_STAGES),
                sum(s["stage_ms"][k] for k in STAGES if k not in OVERLAPPED_STAGES),
                f"{step_ms(s):.2f}",
            )
        )
        if r["name"] in projected:
            p = projected[r["name"]]
            lines.append(
                _stage_row(
                    f"{r['name']} projected",
                    p["stage_ms"],
                    [f"{p[k]:.2f}" for k in PROJECTED_EXTRA],
                    p["exchange_ms"],
                    p["step_ms"],
                    "-",
                )
            )
    return lines


def measured_vs_projected(runs: list[dict], projected: dict) -> list[str]:
    """A sentence per projected run: its exchange and compute stages, measured against projected."""
    measured = {r["name"]: r["summary"]["stage_ms"] for r in runs}
    compute = [
        k for k in STAGES if k not in EXCHANGE_STAGES and k not in ("data_wait", *OVERLAPPED_STAGES)
    ]
    lines = []
    for name, p in projected.items():
        m = measured[name]
        lines.append(
            f"\n{name}: exchange stages measured {sum(m[k] for k in EXCHANGE_STAGES):.2f} ms vs projected "
            f"{p['exchange_ms']:.2f} ms (local work {p['exchange_ms'] - p['alltoall_ms']:.2f} + all-to-all "
            f"{p['alltoall_ms']:.2f}); compute stages ({', '.join(compute)}) measured "
            f"{sum(m[k] for k in compute):.2f} ms vs projected {sum(p['stage_ms'][k] for k in compute):.2f} ms "
            f"+ all-reduce {p['exposed_allreduce_ms']:.2f} ms."
        )
    return lines


def write_markdown(runs: list[dict], projected: dict, path: str) -> None:
    lines = [
        *throughput_table(runs, projected),
        "",
        *stage_table(runs, projected),
        *measured_vs_projected(runs, projected),
    ]
    notes = [
        "",
        "samples/s: global, after warm-up; step ms: wall clock per step after warm-up; data wait %: "
        "data_wait / step ms. Stages are timed with CUDA events on GPU and the wall clock on CPU; dense_bwd is "
        "loss.backward() without grad_dist and sparse_update (with DDP it holds the exposed all-reduce).",
        "Projected: bench/scaling.py from the W=1 run's stage times divided by W (fixed global batch), plus "
        "all-to-all and all-reduce times at the measured all-to-all busbw, no overlap; its exchange column "
        "includes the projected all-to-all."
        if projected
        else "",
    ]
    with open(path, "w") as f:
        f.write("\n".join(lines + notes) + "\n")


def plot(runs: list[dict], projected: dict, directory: str) -> None:
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

    # measured runs, each W > 1 run followed by its projection (stages / W + projected communication)
    bars = []
    for r in runs:
        bars.append((r["name"], r["summary"]["stage_ms"]))
        if r["name"] in projected:
            p = projected[r["name"]]
            bars.append(
                (f"{r['name']} proj.", {**p["stage_ms"], **{k: p[k] for k in PROJECTED_EXTRA}})
            )
    fig, ax = plt.subplots(figsize=(9, 4.5))
    names = [name for name, _ in bars]
    bottom = [0.0] * len(bars)
    for i, stage in enumerate(STAGES + PROJECTED_EXTRA):
        values = [stage_ms.get(stage, 0.0) for _, stage_ms in bars]
        ax.bar(
            names,
            values,
            bottom=bottom,
            label=stage,
            color=plt.cm.tab20(i),
            hatch="//" if stage in PROJECTED_EXTRA else None,
        )
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
    parser.add_argument(
        "--alltoall-jsonl",
        default=os.path.join(os.path.dirname(__file__), "results", "alltoall.jsonl"),
    )
    args = parser.parse_args(argv)
    runs = load(args.directory)
    projected = projections(runs, args.alltoall_jsonl)
    write_markdown(runs, projected, os.path.join(args.directory, "report.md"))
    plot(runs, projected, args.directory)
    print(open(os.path.join(args.directory, "report.md")).read())


if __name__ == "__main__":
    main()
