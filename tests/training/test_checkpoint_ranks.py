"""Checkpoint integrity over several ranks: the ranks agree on the checkpoint to resume from when only one
of them finds a file damaged, the optimizer digest is the same at every world size, and a rank killed at
a fail point under torchrun resumes to the uninterrupted run's weights."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from tests.support.configs import CHECKPOINT_TOML
from tests.support.dist_utils import run_distributed
from tests.support.paths import ROOT
from tests.support.training import context, load_parts, train_with_checkpoints
from training import checkpoint
from training.digest import optimizer_digest, weights_digest

pytestmark = pytest.mark.slow  # every test here runs or reads a 2-rank run

STEPS = 6


@pytest.fixture(scope="module")
def toml(tmp_path_factory):
    path = tmp_path_factory.mktemp("ranks") / "small.toml"
    path.write_text(CHECKPOINT_TOML)
    return str(path)


def _digests(parts):
    return weights_digest(parts), optimizer_digest(parts)


def _straight_and_saved(rank, world_size, group, toml, base):
    """(digests of an uninterrupted W-rank run, digests after 4 steps saved at 2 and 4)."""
    _, parts = train_with_checkpoints(rank, world_size, group, toml, f"{base}/straight", STEPS)
    straight = _digests(parts)
    flags = ["--train.checkpoint_every", "2"]
    _, parts = train_with_checkpoints(rank, world_size, group, toml, f"{base}/saved", 4, flags)
    return straight, _digests(parts)


@pytest.fixture(scope="module")
def w2(toml, tmp_path_factory):
    base = tmp_path_factory.mktemp("w2")
    straight, saved = run_distributed(_straight_and_saved, 2, toml, str(base))
    return {"straight": straight, "saved": saved, "dir": base / "saved"}


def _restore(rank, world_size, group, toml, run_dir):
    """Resume auto in run_dir: (step, checkpoint, skipped checkpoints, digests)."""
    argv = ["--config", toml, "--run.dir", run_dir, "--train.resume", "auto"]
    cfg, parts = load_parts(argv, rank, world_size, group)
    ckpt = checkpoint.Checkpointer(cfg, parts, context(rank, world_size, group))
    step = ckpt.restore()
    return step, ckpt.last_path, ckpt.bad, _digests(parts)


def test_ranks_agree_when_one_rank_finds_its_shard_damaged(toml, w2, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(w2["dir"], run)
    shard = run / "checkpoints" / "step_4" / "shard_00001.bin"  # read by rank 1 only
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    step, path, bad, _ = run_distributed(_restore, 2, toml, str(run))
    # rank 0's files verify, yet it falls back with rank 1
    assert step == 2 and path.endswith("step_2")
    assert bad == [str(run / "checkpoints" / "step_4")]


def test_optimizer_digest_is_the_same_at_every_world_size(toml, w2):
    for world_size in (1, 2):  # resharded at W=1, as written at W=2
        step, _, _, digests = run_distributed(_restore, world_size, toml, str(w2["dir"]))
        assert step == 4 and digests == w2["saved"]


def test_optimizer_digest_sees_every_optimizer_state(toml, w2):
    _, parts = load_parts(["--config", toml])
    checkpoint.load(str(w2["dir"] / "checkpoints" / "step_4"), parts, context())
    before = _digests(parts)
    assert before == w2["saved"]
    exp_avg = next(iter(parts.optimizer.state.values()))["exp_avg"]
    exp_avg.view(-1)[0] += 1e-3  # dense Adam
    after_dense = _digests(parts)
    assert after_dense[0] == before[0] and after_dense[1] != before[1]
    momentum = parts.embeddings.storage.state["momentum2"]
    row = int(torch.nonzero(momentum.sum(1))[0])
    momentum[row, 0] *= 2  # sparse Adam, one touched row
    after_sparse = _digests(parts)
    assert after_sparse[0] == before[0] and after_sparse[1] not in (before[1], after_dense[1])


@pytest.mark.slow
def test_torchrun_rank_killed_writing_its_shard(toml, w2, tmp_path):
    """Rank 1 dies at save:shards of step 6 (resumed from step_4); torchrun restarts the group, which
    resumes from the intact step_4 and ends with the uninterrupted run's weights and optimizer state."""
    run = tmp_path / "run"
    shutil.copytree(w2["dir"], run)
    cmd = [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"),
        *("--max-restarts=1", "train.py", "--config", toml, "--run.dir", str(run)),
        *("--train.resume", "auto", "--train.checkpoint_every", "2"),
        *("--train.fail_at", "save:shards", "--train.fail_rank", "1"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "rank 1: injected failure at save:shards (train.fail_at)" in out
    assert out.count("resumed from") == 2 and "step_4 at step 4" in out
    summary = json.load(open(run / "summary.json"))
    assert summary["steps"] == STEPS
    assert (summary["weights_digest"], summary["optimizer_digest"]) == w2["straight"]
    assert sorted(os.listdir(run / "checkpoints")) == ["step_4", "step_6"]
