"""End-to-end throughput over configs and world sizes: runs train.py and keeps one JSON per run.

    python bench/e2e.py --config configs/tiny.toml --world-sizes 1,2,4 --out bench/results/e2e_cpu
    python bench/e2e.py --config configs/dcnv2_criteo_1tb.toml --world-sizes 1 -- --embedding.row_scale 0.01
    python bench/report.py bench/results/e2e_cpu

Arguments after ``--`` go to train.py unchanged. Each run's summary.json and metrics.jsonl are
kept beside its result so every figure can be traced back to the run that produced it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys

from tqdm import tqdm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench._common import git_commit  # noqa: E402
from training import jsonio  # noqa: E402


def run_one(config: str, world_size: int, out_dir: str, extra: list[str]) -> dict:
    name = f"{os.path.splitext(os.path.basename(config))[0]}_w{world_size}"
    run_dir = os.path.join(out_dir, name)
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
        "--run.dir",
        run_dir,
        *extra,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    metrics = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    result = {
        "name": name,
        "config": config,
        "world_size": world_size,
        "args": extra,
        "device": summary["device"],
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "summary": {k: v for k, v in summary.items() if k != "config"},
        "metrics": metrics,
    }
    with open(os.path.join(out_dir, f"e2e_{name}.json"), "w") as f:
        jsonio.dump(result, f, indent=1)
    return result


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", action="append", required=True, help="config TOML (repeatable)")
    parser.add_argument("--world-sizes", default="1,2", help="comma-separated process counts")
    parser.add_argument(
        "--out", default=os.path.join(ROOT, "bench", "results"), help="directory for the results"
    )
    args = parser.parse_args(own)
    os.makedirs(args.out, exist_ok=True)
    jobs = [(c, int(w)) for c in args.config for w in args.world_sizes.split(",")]
    for config, world_size in tqdm(jobs, desc="e2e runs", unit="run"):
        r = run_one(config, world_size, args.out, extra)
        s = r["summary"]
        tqdm.write(
            f"{r['name']}: {s['samples_per_sec']:.0f} samples/s, eval auc {s['eval_auc']:.4f}, "
            f"MFU {s['mfu_pct'] or float('nan'):.2f}%, a2a {s['exchange_bytes_per_rank'] / 1e3:.1f} kB/step/rank"
        )


if __name__ == "__main__":
    main()
