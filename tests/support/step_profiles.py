"""The profile (summary.json "profile") of one train.py run per world size on the GPU code path (Triton kernels
in the interpreter), on CPU: the census's predicted syncs and launches per step. test_host_syncs.py and
test_launches.py read the same run: each world size trains once per test session.

The profiled steps (3 and 4 of 5) do not log (run.log_every 5). Two warm-up steps: DDP rebuilds its buckets
(a broadcast) in the forward after the first backward, once per run."""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile

from tests.support.paths import ROOT

# W = 1: the Kaggle shape (26 tables, SGD) at a small row_scale; W = 2: tiny.toml (table-wise, row-wise and
# replicated tables, Adam)
RUNS = {
    1: ("configs/dlrm_criteo_kaggle.toml", "--embedding.row_scale", "0.00002"),
    2: ("configs/tiny.toml",),
}
BATCH = {1: 16, 2: 32}


@functools.cache
def step_profile(world_size: int) -> dict:
    config, *args = RUNS[world_size]
    run_dir = tempfile.mkdtemp(prefix=f"census_w{world_size}_")
    atexit.register(shutil.rmtree, run_dir, True)
    env = {**os.environ, "TRITON_INTERPRET": "1", "RECFUSE_FORCE_TRITON": "1"}
    launcher = [sys.executable] + (
        ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world_size}"]
        if world_size > 1
        else []
    )
    cmd = [
        *launcher,
        "train.py",
        *("--config", config, *args, "--train.global_batch_size", str(BATCH[world_size])),
        *("--run.device", "cpu", "--run.dir", run_dir),
        *("--train.steps", "5", "--train.warmup_steps", "2", "--run.profile_steps", "2"),
        *("--run.log_every", "5", "--eval.every", "0"),
        *("--eval.samples", "64", "--eval.batch_size", "32"),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.load(open(os.path.join(run_dir, "summary.json")))["profile"]


def by_file(sites: dict) -> dict:
    """{"path:line op": n} -> {"path op": n}: line numbers move with every edit, files and ops less often."""
    out: dict = {}
    for site, n in sites.items():
        where, op = site.split(" ", 1)
        key = f"{where.split(':')[0]} {op}"
        out[key] = out.get(key, 0) + n
    return out
