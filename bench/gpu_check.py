"""Measure the whole GPU path in one command, within a time budget, and write one report.

    python bench/gpu_check.py                       # one H100: under 8 minutes (--budget-s 480)
    python bench/gpu_check.py --quick --out DIR     # the same code on tiny shapes on the CPU (CI runs this)
    python bench/gpu_check.py --parts kernels,runs  # only some groups of parts

Parts, most valuable first (bench/gpu_check_runs.py lists them with their time estimates):
- kernels:    the kernel microbenchmarks (bench/bench_*.py) at the MLPerf DLRM-DCNv2 size: one rank's batch,
              Zipf ids, one owner's 13 GB shard (quick: "small");
- runs:       W = 1 training: the Kaggle DLRM shape (batch 16384 synthetic, 65536 on a generated dataset)
              and DCN-v2 (row_scale 0.1, batch 65536, bf16), each with run.profile_steps;
- scaling:    a W = 2 run of the Kaggle shape with both ranks on the one GPU (bench/local_work.py: local
              work apart from communication), and the projection to 2, 4, 8 and 2 x 8 GPUs from it
              (bench/scaling.py: a projection, not a measurement);
- tests:      the Triton kernel tests compiled on CUDA, then the tests marked gpu;
- extra_runs: more W = 1 shapes, not in the default groups.
A part starts only if its estimate fits the budget left, and runs under a timeout of the budget left;
skipped and cut parts are listed with why. After every part DIR/report.md is rewritten (and DIR/parts.json,
the actual seconds), so a run cut off by the machine still leaves a report of what it finished.
Writes DIR (default bench/results/gpu_<device>_<date>/): report.md, parts.json, kernels.jsonl, the benches'
output, tests_*.txt and runs/<name>/{summary.json,metrics.jsonl,log.txt} (W > 1: local_work.json).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import sys
import time

# the budget counts from here, before torch's import: end to end is what the lent machine's time sees
STARTED = time.monotonic()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from bench._common import copy_bandwidth, device_name, git_commit  # noqa: E402
from bench.gpu_check_parts import Check, PartTimeout, plan  # noqa: E402
from bench.gpu_check_report import render  # noqa: E402
from training import jsonio  # noqa: E402

GROUPS = ("kernels", "runs", "scaling", "tests", "extra_runs")
DEFAULT_GROUPS = ("kernels", "runs", "scaling", "tests")
# seconds kept back from every part's timeout: killing it, writing the report, exiting
MARGIN_S = 10.0
# a calibrated estimate: the last run's actual seconds, with this headroom
CALIBRATION_HEADROOM = 1.2


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """The options and the groups of parts to run (unknown groups end the program with a usage error)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny shapes, CPU unless --device cuda"
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--out", default="", help="result directory (default bench/results/gpu_<device>_<date>)"
    )
    parser.add_argument(
        "--parts",
        default=",".join(DEFAULT_GROUPS),
        help=f"comma-separated groups of {','.join(GROUPS)}",
    )
    parser.add_argument(
        "--skip", default="", help="comma-separated part names to leave out (e.g. runs/dcnv2_256)"
    )
    parser.add_argument(
        "--budget-s", type=float, default=480.0, help="seconds for the whole command (default 480)"
    )
    parser.add_argument(
        "--calibrate",
        default="",
        help="a previous result DIR: its parts.json's actual seconds (x 1.2) become the estimates",
    )
    parser.add_argument(
        "--profile-steps",
        type=int,
        default=None,
        help="steps profiled for syncs and launches (default 5; 2 with --quick)",
    )
    args = parser.parse_args(argv)
    groups = [p for p in args.parts.split(",") if p]
    if set(groups) - set(GROUPS):
        parser.error(f"unknown parts {sorted(set(groups) - set(GROUPS))}; choose from {GROUPS}")
    return args, groups


def machine_meta(device: torch.device, date: str, quick: bool) -> dict:
    """What the report's header says about the machine, the software and the commit."""
    import triton

    return {
        "device": device_name(device),
        "date": date,
        "commit": git_commit(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "host": f"{platform.machine()}, {os.cpu_count()} cores",
        "copy_bandwidth_gbps": copy_bandwidth(device) / 1e9,
        "quick": quick,
    }


def calibrate(parts, directory: str) -> None:
    """Replace the estimates by a previous run's actual seconds, where it finished the same part."""
    done = {
        p["name"]: p["seconds"]
        for p in json.load(open(os.path.join(directory, "parts.json")))
        if p["status"] == "done"
    }
    for part in parts:
        if part.name in done:
            part.estimate_s = done[part.name] * CALIBRATION_HEADROOM


def run_part(check: Check, part, remaining: float) -> dict:
    """Runs one part if its estimate fits; its record for the Parts table."""
    record = {"name": part.name, "group": part.group, "estimate_s": part.estimate_s}
    if part.estimate_s > remaining - MARGIN_S:
        return {
            **record,
            "status": f"skipped: needs ~{part.estimate_s:.0f} s, {remaining:.0f} s left",
        }
    started = time.monotonic()
    try:
        part.run(check, remaining - MARGIN_S)
        status = "done"
    except PartTimeout as e:
        status = f"cut: {e} (over the budget)"
    except Exception as e:  # a failed part is reported, the others still run
        status = f"failed: {str(e).splitlines()[0][:200]}"
    return {**record, "status": status, "seconds": time.monotonic() - started}


def _out_dir(args, use_cuda: bool, date: str) -> str:
    name = torch.cuda.get_device_name() if use_cuda else "cpu"
    name = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")
    return os.path.abspath(args.out or os.path.join(ROOT, "bench", "results", f"gpu_{name}_{date}"))


def main(argv: list[str] | None = None) -> int:
    # run as a script: since the process started; called again (the tests): since this call
    started = STARTED if argv is None else time.monotonic()
    args, groups = parse_args(argv)
    use_cuda = args.device == "cuda" or (
        args.device == "auto" and not args.quick and torch.cuda.is_available()
    )
    device = torch.device("cuda" if use_cuda else "cpu")
    date = datetime.date.today().isoformat()
    out = _out_dir(args, use_cuda, date)
    os.makedirs(out, exist_ok=True)
    profile = args.profile_steps if args.profile_steps is not None else (2 if args.quick else 5)
    check = Check(out, device, args.quick, profile, machine_meta(device, date, args.quick))
    skip = set(filter(None, args.skip.split(",")))
    parts = [p for p in plan(check, groups) if p.name not in skip]
    if args.calibrate:
        calibrate(parts, args.calibrate)
    for part in parts:
        check.parts.append(run_part(check, part, args.budget_s - (time.monotonic() - started)))
        print(f"gpu_check: {part.name}: {check.parts[-1]['status']}", flush=True)
        with open(os.path.join(out, "parts.json"), "w") as f:
            jsonio.dump(check.parts, f, indent=1)
        render(check, args.budget_s, time.monotonic() - started)
    for d in (os.path.join(out, x) for x in os.listdir(out) if x.startswith("dataset_")):
        shutil.rmtree(d)  # generated data is not a result
    print(render(check, args.budget_s, time.monotonic() - started))
    failed = [p["name"] for p in check.parts if not p["status"].startswith(("done", "skipped"))]
    if failed:
        print(f"gpu_check: not done: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
