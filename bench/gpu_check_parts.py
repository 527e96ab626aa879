"""The parts of bench/gpu_check.py: each runs one thing in a subprocess under the time it is given and
keeps its result in the Check, which the report is rendered from after every part."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass, field

import numpy as np
import torch

from bench import local_work, scaling
from bench.gpu_check_runs import KERNEL_BENCHES, TESTS, run_specs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# tables of the generated dataset: Kaggle cardinalities capped here, as --hash-rows would
KAGGLE_HASH_ROWS = 1_000_000
QUICK_HASH_ROWS = 2_000


class PartTimeout(Exception):
    """A part ran out of the time it was given; its processes were killed."""


@dataclass
class Check:
    """One gpu_check run: where it writes, how, and every result so far."""

    out: str
    device: torch.device
    quick: bool
    profile_steps: int
    meta: dict = field(default_factory=dict)
    parts: list[dict] = field(default_factory=list)  # name, group, estimate_s, status, seconds
    tests: list[dict] = field(default_factory=list)
    runs: list[dict] = field(default_factory=list)
    scaling: list[dict] = field(default_factory=list)

    def kernels(self) -> list[dict]:
        path = os.path.join(self.out, "kernels.jsonl")
        return [json.loads(line) for line in open(path)] if os.path.exists(path) else []


@dataclass
class Part:
    name: str
    group: str
    estimate_s: float
    run: object  # (Check, timeout_s) -> None


def run_command(cmd: list[str], timeout: float, env: dict | None = None):
    """(returncode, stdout, stderr); on timeout the command's whole process group is killed (torchrun's
    ranks too) and PartTimeout raised."""
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=max(timeout, 1.0))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise PartTimeout(f"killed after {timeout:.0f} s") from None
    return proc.returncode, out, err


# ---- kernels ------------------------------------------------------------------------------------------------
def kernel_part(script: str):
    def run(check: Check, timeout: float) -> None:
        env = {**os.environ, "RECFUSE_BENCH_RESULTS": os.path.join(check.out, "kernels.jsonl")}
        size = ["--size", "small", "--reps", "1"] if check.quick else ["--size", "dlrm"]
        code, out, err = run_command(
            [sys.executable, os.path.join("bench", script), *size], timeout, env
        )
        with open(os.path.join(check.out, f"{script.removesuffix('.py')}.txt"), "w") as f:
            f.write(out + err)
        if code != 0:
            raise RuntimeError(f"{script} failed:\n{err[-3000:]}")

    return run


# ---- training -----------------------------------------------------------------------------------------------
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


def train_args(check: Check, spec: dict, run_dir: str | None) -> list[str]:
    """train.py's arguments for a run of the table (its dataset generated first when it trains on one);
    run.dir last, unless None (bench/local_work.py sets it)."""
    args = [
        "--config",
        spec["config"],
        "--run.device",
        check.device.type,
        "--train.global_batch_size",
        str(spec["batch"]),
        "--run.profile_steps",
        str(check.profile_steps if spec["nproc"] == 1 else 0),
        *spec["args"],
    ]
    if spec["data"] == "dataset":
        steps = int(spec["args"][spec["args"].index("--train.steps") + 1])
        dataset = make_kaggle_dataset(
            os.path.join(check.out, f"dataset_{spec['batch']}"),
            spec["batch"] * (steps + 8),  # the default split evaluates on the last 1/16
            spec["config"],
            QUICK_HASH_ROWS if check.quick else KAGGLE_HASH_ROWS,
        )
        args += ["--data.path", dataset, "--data.epochs", "100"]  # train.steps ends the run
    return args if run_dir is None else [*args, "--run.dir", run_dir]


def _logged_run(cmd: list[str], run_dir: str, result: dict, timeout: float, what: str) -> None:
    """Run cmd, its command line and output in run_dir/log.txt; a failure is kept in result and raised."""
    code, out, err = run_command(cmd, timeout)
    with open(os.path.join(run_dir, "log.txt"), "w") as f:
        f.write(" ".join(cmd) + "\n" + out + err)
    if code != 0:
        result["error"] = err[-3000:]
        raise RuntimeError(f"{what} failed: see runs/{os.path.basename(run_dir)}/log.txt")


def run_part(spec: dict):
    def run(check: Check, timeout: float) -> None:
        run_dir = os.path.join(check.out, "runs", spec["name"])
        os.makedirs(run_dir, exist_ok=True)
        cmd = [sys.executable, "train.py", *train_args(check, spec, run_dir)]
        result = {"spec": spec}
        check.runs.append(result)
        _logged_run(cmd, run_dir, result, timeout, "train.py")
        result["summary"] = json.load(open(os.path.join(run_dir, "summary.json")))

    return run


# ---- W > 1 on one device, and the projection ----------------------------------------------------------------
def scaling_part(spec: dict):
    def run(check: Check, timeout: float) -> None:
        run_dir = os.path.join(check.out, "runs", spec["name"])
        os.makedirs(run_dir, exist_ok=True)
        cmd = local_work.probe_command(run_dir, spec["nproc"], train_args(check, spec, None))
        result = {"spec": spec}
        check.scaling.append(result)
        _logged_run(cmd, run_dir, result, timeout, f"the W={spec['nproc']} run")
        result["local_work"] = local_work.aggregate(run_dir)
        base = next((r for r in check.runs if r["spec"]["name"] == spec["baseline"]), None)
        baseline = ""
        if base is not None and "summary" in base:
            baseline = os.path.join(check.out, "runs", spec["baseline"], "summary.json")
        result["baseline"] = baseline or f"none ({spec['baseline']} did not run)"
        links = dict(scaling.LINK_DEFAULTS)
        result["projection"] = scaling.projection_report(run_dir, links, 0.0, baseline)

    return run


# ---- tests --------------------------------------------------------------------------------------------------
def tests_part(name: str, args: list[str]):
    def run(check: Check, timeout: float) -> None:
        cmd = [sys.executable, "-m", "pytest", "-q", *args]
        result = {"command": " ".join(cmd[2:]), "returncode": None, "summary": "timed out"}
        check.tests.append(result)
        code, out, err = run_command(cmd, timeout)
        with open(os.path.join(check.out, f"tests_{name}.txt"), "w") as f:
            f.write(f"$ {' '.join(cmd[2:])}\n{out}{err}\n")
        tail = [
            line
            for line in out.splitlines()
            if re.search(r"\d+ (passed|failed|skipped|deselected|error)", line)
        ]
        result.update(returncode=code, summary=tail[-1].strip("= ") if tail else "no summary")
        if code not in (0, 5):  # 5: nothing collected
            raise RuntimeError(f"pytest {' '.join(args)}: exit {code}")

    return run


# ---- the plan -----------------------------------------------------------------------------------------------
def plan(check: Check, groups: list[str]) -> list[Part]:
    """Every part of the chosen groups, in the order of PARTS' groups and of each group's table."""
    parts = []
    if "kernels" in groups:
        for script, (full, quick) in KERNEL_BENCHES.items():
            estimate = quick if check.quick else full
            parts.append(Part(f"kernels/{script[:-3]}", "kernels", estimate, kernel_part(script)))
    for group in ("runs", "scaling", "extra_runs"):
        if group in groups:
            make = scaling_part if group == "scaling" else run_part
            for spec in run_specs(check.quick, group):
                parts.append(Part(f"{group}/{spec['name']}", group, spec["estimate_s"], make(spec)))
    if "tests" in groups:
        for name, args, full, quick in TESTS:
            if not check.quick or quick is not None:
                estimate = quick if check.quick else full
                parts.append(Part(f"tests/{name}", "tests", estimate, tests_part(name, args)))
    return parts
