"""Measure the whole GPU path in one command and write one report.

    python bench/gpu_check.py                       # on a GPU machine (under 9 minutes on one H100)
    python bench/gpu_check.py --quick --out DIR     # the same code on tiny shapes on the CPU (CI runs this)
    python bench/gpu_check.py --parts runs          # only some of: tests, kernels, runs

Parts:
- tests:   the GPU tests (pytest -m gpu) and, on a GPU, the Triton kernel tests compiled on CUDA;
- kernels: the kernel microbenchmarks (bench/bench_*.py) at the MLPerf DLRM-DCNv2 size (quick: "small");
- runs:    W = 1 training of configs/tiny.toml, the Kaggle DLRM shape at batch 16384 and 65536 on synthetic
           data and on a generated preprocessed dataset, and the DCN-v2 shape (row_scale 0.1, batch 65536,
           bf16), each with run.profile_steps (syncs and kernel launches per step).
Writes DIR (default bench/results/gpu_<device>_<date>/): report.md, tests.txt, kernels.jsonl and
runs/<name>/{summary.json,metrics.jsonl}. report.md has samples/s, per-stage ms, data wait %, MFU,
embedding GB/s and % of the measured copy bandwidth, peak memory, syncs and launches per step.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time

import numpy as np
from tqdm import tqdm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from bench._common import copy_bandwidth, device_name, git_commit  # noqa: E402
from bench.gpu_check_runs import run_specs  # noqa: E402
from training.stages import STAGES  # noqa: E402

PARTS = ("tests", "kernels", "runs")
KERNEL_BENCHES = (
    "bench_unique_partition.py",
    "bench_gather_pool.py",
    "bench_sparse_update.py",
    "bench_hash_table.py",
)
# tables of the generated dataset: Kaggle cardinalities capped here, as --hash-rows would
KAGGLE_HASH_ROWS = 1_000_000
QUICK_HASH_ROWS = 2_000


# ---- parts ------------------------------------------------------------------------------------------------
def run_tests(out: str, device: torch.device) -> dict:
    """pytest -m gpu (skipped on CPU) and, on a GPU, the compiled Triton kernel tests."""
    commands = [[sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests"]]
    if device.type == "cuda":
        commands.append([sys.executable, "-m", "pytest", "-q", "tests/kernels"])
    results = []
    with open(os.path.join(out, "tests.txt"), "w") as log:
        for cmd in commands:
            started = time.perf_counter()
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            log.write(f"$ {' '.join(cmd[2:])}\n{proc.stdout}{proc.stderr}\n")
            tail = [
                line
                for line in proc.stdout.splitlines()
                if re.search(r"\d+ (passed|failed|skipped|deselected)", line)
            ]
            results.append(
                {
                    "command": " ".join(cmd[2:]),
                    "returncode": proc.returncode,
                    "summary": tail[-1].strip("= ") if tail else "no pytest summary",
                    "seconds": time.perf_counter() - started,
                }
            )
    # 5: nothing collected
    return {"commands": results, "ok": all(r["returncode"] in (0, 5) for r in results)}


def run_kernels(out: str, quick: bool) -> list[dict]:
    """The kernel microbenchmarks; each appends its rows to out/kernels.jsonl."""
    path = os.path.join(out, "kernels.jsonl")
    env = {**os.environ, "RECFUSE_BENCH_RESULTS": path}
    size = ["--size", "small", "--reps", "1"] if quick else ["--size", "dlrm"]
    for script in tqdm(KERNEL_BENCHES, desc="kernel benchmarks", unit="bench"):
        proc = subprocess.run(
            [sys.executable, os.path.join("bench", script), *size],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{script} failed:\n{proc.stderr[-4000:]}")
    return [json.loads(line) for line in open(path)] if os.path.exists(path) else []


def make_kaggle_dataset(
    directory: str, rows: int, config: str, max_rows: int, seed: int = 0
) -> str:
    """A preprocessed dataset of the Kaggle shape: 13 dense, 26 categorical (cardinalities capped at max_rows,
    as --hash-rows would), skewed ids, labels from a hidden rule so that training has something to learn."""
    from pipeline.dataset_format import write_dataset
    from training.config import load_config

    if os.path.exists(os.path.join(directory, "meta.json")):
        return directory
    tables = load_config(["--config", config]).embedding.tables
    table_rows = [min(t.num_embeddings, max_rows) for t in tables]
    rng = np.random.default_rng(seed)
    dense = np.log1p(rng.exponential(3.0, size=(rows, 13))).astype(np.float32)
    sparse = np.stack([(rng.random(rows) ** 3 * n).astype(np.int32) for n in table_rows], axis=1)
    logit = dense[:, :4].sum(1) - 4.0 + 0.5 * (sparse[:, 0] % 7 == 0)
    labels = (rng.random(rows) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
    write_dataset(directory, dense, sparse, labels, [t.name for t in tables], table_rows)
    return directory


def run_training(
    out: str, spec: dict, device: torch.device, dataset: str | None, profile_steps: int
) -> dict:
    run_dir = os.path.join(out, "runs", spec["name"])
    os.makedirs(run_dir, exist_ok=True)
    cmd = [
        sys.executable,
        "train.py",
        "--config",
        spec["config"],
        "--run.dir",
        run_dir,
        "--run.device",
        device.type,
        "--train.global_batch_size",
        str(spec["batch"]),
        "--run.profile_steps",
        str(profile_steps),
        *spec["args"],
    ]
    if dataset:
        # train.steps, not the dataset, ends the run
        cmd += ["--data.path", dataset, "--data.epochs", "100"]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    with open(os.path.join(run_dir, "log.txt"), "w") as f:
        f.write(" ".join(cmd) + "\n" + proc.stdout + proc.stderr)
    if proc.returncode != 0:
        return {
            "spec": spec,
            "error": proc.stderr[-3000:],
            "seconds": time.perf_counter() - started,
        }
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    return {"spec": spec, "summary": summary, "seconds": time.perf_counter() - started}


def run_all_training(out: str, device: torch.device, quick: bool, profile_steps: int) -> list[dict]:
    """Every run of the table, each on its generated dataset where it trains on one."""
    runs = []
    for spec in tqdm(run_specs(quick), desc="training runs", unit="run"):
        dataset = None
        if spec["data"] == "dataset":
            steps = int(spec["args"][spec["args"].index("--train.steps") + 1])
            rows = spec["batch"] * (steps + 8)  # the default split evaluates on the last 1/16
            dataset = make_kaggle_dataset(
                os.path.join(out, f"dataset_{spec['batch']}"),
                rows,
                spec["config"],
                QUICK_HASH_ROWS if quick else KAGGLE_HASH_ROWS,
            )
        runs.append(run_training(out, spec, device, dataset, profile_steps))
        r = runs[-1]
        tqdm.write(
            f"{spec['name']}: "
            + (f"{r['summary']['samples_per_sec']:,.0f} samples/s" if "summary" in r else "FAILED")
        )
    return runs


# ---- report -----------------------------------------------------------------------------------------------
def _fmt(value, digits=1, scale=1.0) -> str:
    return "-" if value is None else f"{value * scale:,.{digits}f}"


def _tests_section(tests: dict) -> list[str]:
    lines = ["## Tests", "", "| command | result | s |", "|---|---|---|"]
    lines += [
        f"| `{r['command']}` | {r['summary']} (exit {r['returncode']}) | {r['seconds']:.0f} |"
        for r in tests["commands"]
    ]
    return [*lines, ""]


def _kernels_section(kernels: list[dict]) -> list[str]:
    lines = [
        "## Kernels",
        "",
        "| bench | impl | size | median ms | GB/s | % of copy BW |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {k['bench']} | {k['impl']} | {k['size']} | {k['ms_median']:.3f} | {k['gb_per_s']:.1f} | "
        f"{k['pct_copy']:.1f} |"
        for k in kernels
    ]
    return [*lines, ""]


def _run_row(r: dict, copy: float) -> str:
    """One training run's row of the table; a failed run points to its log."""
    spec = r["spec"]
    if "error" in r:
        return f"| {spec['name']} | {spec['batch']} | {spec['data']} | failed: see runs/{spec['name']}/log.txt |"
    s = r["summary"]
    step = 1e3 * s["global_batch_size"] / s["samples_per_sec"] if s["samples_per_sec"] else None
    prof = s.get("profile") or {}
    gbps = s.get("embedding_gbps")
    return (
        f"| {spec['name']} | {spec['batch']} | {spec['data']} | "
        f"{_fmt(s['samples_per_sec'], 0)} | {_fmt(step, 2)} | "
        f"{_fmt(s.get('data_wait_pct'))} | {_fmt(s.get('mfu_pct'), 2)} | {_fmt(gbps)} | "
        f"{_fmt(None if gbps is None else 100 * gbps / copy)} | {_fmt(s.get('peak_memory_gib'), 2)} | "
        f"{_sync_cell(prof)} | {_fmt(prof.get('launches_per_step'), 0)} |"
    )


def _runs_section(runs: list[dict], copy: float) -> list[str]:
    lines = [
        "## Training (W = 1)",
        "",
        "| run | batch | data | samples/s | step ms | data wait % | MFU % | emb GB/s | emb % copy BW | "
        "peak GiB | syncs/step | launches/step |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [_run_row(r, copy) for r in runs]
    if any("predicted_syncs_per_step" in (r.get("summary", {}).get("profile") or {}) for r in runs):
        lines += [
            "",
            "syncs/step (predicted): no device to count on, so training.profiling.HostSyncCensus counts the "
            "calls that would sync on a GPU, on this run's path (on CPU the torch reference kernels).",
        ]
    lines += [
        "",
        "Per-stage ms per step (training.stages.STAGES, after warm-up):",
        "",
        "| run | " + " | ".join(STAGES) + " |",
        "|---|" + "---|" * len(STAGES),
    ]
    lines += [
        "| "
        + r["spec"]["name"]
        + " | "
        + " | ".join(f"{r['summary']['stage_ms'][k]:.2f}" for k in STAGES)
        + " |"
        for r in runs
        if "summary" in r
    ]
    return [*lines, ""]


def render(out: str, meta: dict, tests: dict | None, kernels: list[dict], runs: list[dict]) -> str:
    """report.md from the parts that ran; returns its text."""
    copy = meta["copy_bandwidth_gbps"]
    lines = [
        f"# GPU check: {meta['device']}",
        "",
        f"{meta['date']}, commit {meta['commit']}, torch {meta['torch']}, triton {meta['triton']}, "
        f"{meta['host']}. Measured copy bandwidth (read + write): {copy:,.1f} GB/s. Total {meta['seconds']:.0f} s.",
        "",
    ]
    if tests is not None:
        lines += _tests_section(tests)
    if kernels:
        lines += _kernels_section(kernels)
    if runs:
        lines += _runs_section(runs, copy)
    text = "\n".join(lines)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(text)
    return text


def _sync_cell(profile: dict) -> str:
    """Measured syncs per step on CUDA; on CPU the census's prediction, marked as such."""
    if "syncs_per_step" in profile:
        return _fmt(profile["syncs_per_step"])
    predicted = profile.get("predicted_syncs_per_step")
    return f"{_fmt(predicted)} (predicted)" if predicted is not None else _fmt(None)


# ---- command line -----------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """The options and the parts to run (unknown parts end the program with a usage error)."""
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
        "--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}"
    )
    parser.add_argument(
        "--profile-steps",
        type=int,
        default=None,
        help="steps profiled for syncs and launches (default 5; 2 with --quick)",
    )
    args = parser.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    if set(parts) - set(PARTS):
        parser.error(f"unknown parts {sorted(set(parts) - set(PARTS))}; choose from {PARTS}")
    return args, parts


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


def main(argv: list[str] | None = None) -> int:
    args, parts = parse_args(argv)
    use_cuda = args.device == "cuda" or (
        args.device == "auto" and not args.quick and torch.cuda.is_available()
    )
    device = torch.device("cuda" if use_cuda else "cpu")
    date = datetime.date.today().isoformat()
    name = re.sub(r"[^A-Za-z0-9]+", "-", torch.cuda.get_device_name() if use_cuda else "cpu").strip(
        "-"
    )
    out = os.path.abspath(args.out or os.path.join(ROOT, "bench", "results", f"gpu_{name}_{date}"))
    os.makedirs(out, exist_ok=True)
    started = time.perf_counter()
    meta = machine_meta(device, date, args.quick)
    tests = run_tests(out, device) if "tests" in parts else None
    kernels = run_kernels(out, args.quick) if "kernels" in parts else []
    runs = []
    if "runs" in parts:
        profile_steps = (
            args.profile_steps if args.profile_steps is not None else (2 if args.quick else 5)
        )
        runs = run_all_training(out, device, args.quick, profile_steps)
    meta["seconds"] = time.perf_counter() - started
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump({**meta, "tests": tests}, f, indent=1)
    print(render(out, meta, tests, kernels, runs))
    for d in (os.path.join(out, x) for x in os.listdir(out) if x.startswith("dataset_")):
        shutil.rmtree(d)  # generated data is not a result
    failed = [r["spec"]["name"] for r in runs if "error" in r]
    if failed or (tests is not None and not tests["ok"]):
        print(
            f"gpu_check: failures: runs {failed}, tests ok={tests and tests['ok']}", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
