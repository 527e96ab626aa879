"""Device->host syncs of the training step, predicted on CPU (training.profiling.HostSyncCensus).

A GPU step that waits for the device is host-bound (the budget: <= 3 syncs per step for the Kaggle shape at
W=1). On a GPU run.profile_steps counts the runtime's syncs; on CPU the census lists the calls
that would sync there, per line, so a change that adds one fails here, on any machine.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.support.paths import ROOT
from training.profiling import HostSyncCensus

THIS = "tests/training/test_host_syncs.py"


def _line_of(text: str) -> int:
    return next(i for i, line in enumerate(open(__file__), start=1) if text in line)


class _Doubler(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, grad):
        torch.unique(grad)  # backward sync
        grad.tolist()  # backward host copy
        return grad * 2


def test_census_counts_each_kind_of_sync_at_its_line():
    t = torch.tensor([3, 0, 2])
    x = torch.ones(3, requires_grad=True)
    with HostSyncCensus() as census:
        t.tolist()  # host copy
        bool(t.any())  # scalar read
        t[t > 0]  # boolean mask
        t.nonzero()  # nonzero
        torch.repeat_interleave(torch.arange(3), t)  # sized by values
        torch.repeat_interleave(torch.arange(3), t, output_size=5)
        t.cumsum(0)
        t.to(torch.float32)
        _Doubler.apply(x).sum().backward()
    expected = {
        f"{THIS}:{_line_of(marker)} {op}": 1
        for marker, op in [
            ("# host copy", "tolist"),
            ("# scalar read", "_local_scalar_dense"),
            ("# boolean mask", "index"),
            ("# nonzero", "nonzero"),
            ("# sized by values", "repeat_interleave"),
            ("# backward sync", "_unique2"),
            ("# backward host copy", "tolist"),
        ]
    }
    assert dict(census.sites) == expected


def test_optimizer_step_counters_live_on_the_host():
    w = torch.nn.Parameter(torch.ones(4))
    optimizer = torch.optim.Adagrad([w], lr=0.1)
    w.sum().backward()
    with HostSyncCensus() as census:
        optimizer.step()  # reads its step counter with .item(): a host tensor, also in a CUDA run
    assert not census.sites


def _profile(tmp_path, nproc: int, config: str, *args: str) -> dict:
    # the GPU path: Triton kernels
    env = {**os.environ, "TRITON_INTERPRET": "1", "RECFUSE_FORCE_TRITON": "1"}
    launcher = [sys.executable] + (
        ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        if nproc > 1
        else []
    )
    cmd = [
        *launcher,
        "train.py",
        "--config",
        config,
        "--run.device",
        "cpu",
        "--run.dir",
        str(tmp_path),
        "--train.steps",
        "4",
        "--train.warmup_steps",
        "1",
        "--run.profile_steps",
        "2",
        "--run.log_every",
        "4",
        "--eval.every",
        "0",
        "--eval.samples",
        "64",
        "--eval.batch_size",
        "32",
        *args,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.load(open(tmp_path / "summary.json"))["profile"]


@pytest.mark.slow
def test_single_rank_kaggle_step_makes_two_syncs(tmp_path):
    """W=1, Kaggle shape (26 tables): the id range check and the fused backward's segment count."""
    profile = _profile(
        tmp_path,
        1,
        "configs/dlrm_criteo_kaggle.toml",
        "--embedding.row_scale",
        "0.00002",
        "--train.global_batch_size",
        "16",
    )
    assert profile["steps"] == 2
    sites = {
        site.split(":")[0] + " " + site.split(" ")[1]: n
        for site, n in profile["sync_sites"].items()
    }
    assert sites == {
        "embedding/ids.py _local_scalar_dense": 1.0,
        "kernels/pool_backward_update_host_triton.py nonzero": 1.0,
    }, profile["sync_sites"]
    assert profile["predicted_syncs_per_step"] == 2.0 <= 3


@pytest.mark.slow
def test_two_rank_step_makes_one_sync_per_exchange_decision(tmp_path):
    """W=2, tiny.toml (table-wise, row-wise and replicated tables): the id check, the unique count, both
    ranks' split sizes at once, the owner's dedup count, and the replicated tables' touched rows."""
    profile = _profile(tmp_path, 2, "configs/tiny.toml", "--train.global_batch_size", "32")
    files = sorted(
        site.split(":")[0] for site, n in profile["sync_sites"].items() for _ in range(int(n))
    )
    assert files == (
        ["embedding/ids.py"]
        + ["embedding/sharded.py"] * 2
        + ["kernels/unique_partition_triton.py"] * 2
    ), profile["sync_sites"]
    assert profile["predicted_syncs_per_step"] == 5.0
