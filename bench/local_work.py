"""Per-rank local work of a W > 1 training step, measured with W ranks on one machine (one device).

    python bench/local_work.py --nproc 2 --out DIR -- --config configs/tiny.toml --train.steps 40
    python bench/local_work.py --nproc 2 --out DIR -- --config configs/tiny.toml --run.device cuda

Runs train.py under torchrun with W processes through bench/comm_probe.py (gloo on a CPU; on a one-GPU
machine every rank on cuda:0 and gloo, as train.py picks it), then writes DIR/local_work.json:
- local_stage_ms: per stage (training.stages.STAGES), its time minus the communication charged to it, per
  step after warm-up (train.warmup_steps + run.profile_steps), the largest over the ranks (the step waits
  for the slowest rank at every exchange);
- collectives: calls and send-buffer bytes per step by stage and kind (e.g. "grad_dist/all_to_all_single",
  "dense_bwd/ddp_allreduce"), of the rank with the most;
- from summary.json: world_size, local_batch, exchange_bytes_per_rank (embedding/byte_model.py),
  allreduce_bytes, samples_per_sec (of the probed run: collectives serialized, not a throughput figure).
bench/scaling.py projects W = 2, 4, 8, 16 from it.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from training import jsonio  # noqa: E402
from training.stages import STAGES  # noqa: E402

SUMMARY_KEYS = ("world_size", "local_batch", "exchange_bytes_per_rank", "allreduce_bytes", "device")


def probe_command(out: str, nproc: int, train_args: list[str], lock: bool = True) -> list[str]:
    """torchrun of bench/comm_probe.py: W ranks of train.py writing into ``out`` (also the run.dir)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        os.path.join(ROOT, "bench", "comm_probe.py"),
        "--out",
        out,
        *([] if lock else ["--no-lock"]),
        "--",
        *train_args,
        "--run.dir",
        out,
    ]


def _measured_windows(windows: list[dict], unmeasured: int) -> list[dict]:
    """The windows after warm-up: StageTimer.collect runs at the last warm-up step, then at log steps."""
    kept, done = [], 0
    for w in windows:
        if done >= unmeasured:
            kept.append(w)
        done += w["steps"]
    return kept


def rank_local_work(probe: dict, unmeasured: int) -> dict:
    """One rank's per-step stage time, communication and local work, and its collectives per step."""
    windows = _measured_windows(probe["windows"], unmeasured)
    steps = sum(w["steps"] for w in windows)
    if steps == 0:
        raise ValueError(
            f"rank {probe['rank']}: no measured step after the {unmeasured} warm-up steps"
        )

    def per_step(field: str) -> dict:
        total: dict = {}
        for w in windows:
            for k, v in w[field].items():
                total[k] = total.get(k, 0) + v
        return {k: v / steps for k, v in total.items()}

    stage_ms, comm_ms = per_step("stage_ms"), per_step("comm_ms")
    return {
        "rank": probe["rank"],
        "steps": steps,
        "stage_ms": {s: stage_ms.get(s, 0.0) for s in STAGES},
        "comm_ms": comm_ms,
        "local_stage_ms": {s: max(stage_ms.get(s, 0.0) - comm_ms.get(s, 0.0), 0.0) for s in STAGES},
        "calls": per_step("calls"),
        "bytes": per_step("bytes"),
    }


def aggregate(out: str) -> dict:
    """DIR/local_work.json from DIR/summary.json and every rank's DIR/probe_rank<r>.json."""
    summary = json.load(open(os.path.join(out, "summary.json")))
    cfg = summary["config"]
    unmeasured = cfg["train"]["warmup_steps"] + cfg["run"]["profile_steps"]
    probes = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(out, "probe_rank*.json")))]
    if len(probes) != summary["world_size"]:
        raise ValueError(f"{out}: {len(probes)} probe files for W={summary['world_size']}")
    ranks = [rank_local_work(p, unmeasured) for p in probes]
    keys = sorted({k for r in ranks for k in r["calls"]})
    result = {
        **{k: summary[k] for k in SUMMARY_KEYS},
        "dense_compiled": cfg["model"]["compile"],
        "exchange_dtype": cfg["embedding"]["exchange_dtype"],
        "probed_samples_per_sec": summary["samples_per_sec"],
        "device_lock": all(p["lock"] for p in probes),
        "measured_steps": min(r["steps"] for r in ranks),
        "local_stage_ms": {s: max(r["local_stage_ms"][s] for r in ranks) for s in STAGES},
        "collectives": {
            k: {
                "calls": max(r["calls"].get(k, 0) for r in ranks),
                "bytes": max(r["bytes"].get(k, 0) for r in ranks),
            }
            for k in keys
        },
        "ranks": ranks,
    }
    with open(os.path.join(out, "local_work.json"), "w") as f:
        jsonio.dump(result, f, indent=1)
    return result


def format_table(result: dict) -> list[str]:
    """Markdown: per stage the probed time, its communication and the local work, rank by rank."""
    ranks = result["ranks"]
    lines = [
        f"Local work per step, W={result['world_size']} ranks on one {result['device']} "
        f"(device lock: {'yes' if result['device_lock'] else 'no'}), {result['measured_steps']} steps "
        "after warm-up; ms per step, stage time - communication charged to it:",
        "",
        "| stage | "
        + " | ".join(f"rank {r['rank']} time / comm" for r in ranks)
        + " | local (max) |",
        "|---|" + "---|" * (len(ranks) + 1),
    ]
    for s in STAGES:
        cells = [f"{r['stage_ms'][s]:.2f} / {r['comm_ms'].get(s, 0.0):.2f}" for r in ranks]
        lines.append(f"| {s} | " + " | ".join(cells) + f" | {result['local_stage_ms'][s]:.2f} |")
    return lines


def run(out: str, nproc: int, train_args: list[str], lock: bool = True, timeout=None) -> dict:
    """Probe a W-rank run into ``out`` and aggregate it; raises with the run's log tail on failure."""
    os.makedirs(out, exist_ok=True)
    cmd = probe_command(out, nproc, train_args, lock)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    with open(os.path.join(out, "log.txt"), "w") as f:
        f.write(" ".join(cmd) + "\n" + proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
    return aggregate(out)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nproc", type=int, default=2, help="ranks W (> 1)")
    parser.add_argument("--out", required=True, help="result directory (also the run.dir)")
    parser.add_argument(
        "--no-lock", action="store_true", help="let the ranks' local work overlap on the device"
    )
    args = parser.parse_args(argv[:split])
    if args.nproc < 2:
        parser.error("--nproc must be at least 2: a W = 1 step does none of the W > 1 work")
    result = run(args.out, args.nproc, argv[split + 1 :], lock=not args.no_lock)
    print("\n".join(format_table(result)))
    print(f"\nwrote {os.path.join(args.out, 'local_work.json')}")


if __name__ == "__main__":
    main()
