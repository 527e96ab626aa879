"""Faults at run time: a NaN loss on one rank skipped on all ranks (train.skip_nonfinite_loss), a hung rank
reported by the others within train.timeout_s, and every collective type of a step honouring that timeout."""

import datetime
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.multiprocessing as mp

import train
from tests.support.configs import CHECKPOINT_TOML as TOML
from tests.support.dist_utils import run_distributed
from tests.support.paths import ROOT
from tests.support.training import host_batches, load_parts, train_losses
from training.config import load_config
from training.digest import weights_digest
from training.distributed import explain_timeouts, setup_distributed
from training.export import load_export
from training.guards import NonFiniteLoss

STEPS, NAN_STEP = 6, 3


@pytest.fixture(scope="module")
def toml(tmp_path_factory):
    path = tmp_path_factory.mktemp("faults") / "small.toml"
    path.write_text(TOML)
    return str(path)


def _torchrun(toml, run_dir, *extra, timeout=120):
    """train.py under torchrun, 2 ranks; its own session, so that everything it started can be killed."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "train.py",
        "--config",
        toml,
        "--run.dir",
        str(run_dir),
        *extra,
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None or _alive_in_group(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, out


def _alive_in_group(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _digests_without_step(rank, world_size, group, toml, steps, dropped):
    """weights_digest after training on every batch, and after training with batch `dropped` left out."""
    out = []
    for skip in (None, dropped):
        cfg, parts = load_parts(
            ["--config", toml, "--train.steps", str(steps)], rank, world_size, group
        )
        batches = [
            b for step, b in enumerate(host_batches(cfg, rank, world_size), start=1) if step != skip
        ]
        train_losses(cfg, parts, world_size, batches=batches)
        out.append(weights_digest(parts))
    return out


# ---- skip_nonfinite_loss --------------------------------------------------------------------------------
def test_nan_loss_on_one_rank_is_skipped_on_both(toml, tmp_path):
    rc, out = _torchrun(
        toml,
        tmp_path,
        "--train.skip_nonfinite_loss",
        "true",
        "--train.inject_nan_loss_step",
        str(NAN_STEP),
        "--train.inject_nan_loss_rank",
        "1",
    )
    assert rc == 0, out[-3000:]
    assert f"step {NAN_STEP}: loss is NaN/inf on a rank; step skipped on every rank" in out
    summary = json.load(open(tmp_path / "summary.json"))
    assert summary["steps"] == STEPS and summary["skipped_steps"] == 1
    lines = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [(line["step"], line["skipped_steps"], len(line["losses"])) for line in lines] == [
        (2, 0, 2),
        (4, 1, 1),
        (6, 1, 2),
    ]
    every_batch, without_nan_step = run_distributed(_digests_without_step, 2, toml, STEPS, NAN_STEP)
    # as if step 3's batch never existed
    assert summary["weights_digest"] == without_nan_step != every_batch


def test_nan_loss_stops_without_the_flag(toml, tmp_path):
    with pytest.raises(
        NonFiniteLoss,
        match=r"step 3; training stopped, last good checkpoint: .*step_2 "
        r"\(train.skip_nonfinite_loss=true skips",
    ):
        train.main(
            [
                "--config",
                toml,
                "--run.dir",
                str(tmp_path),
                "--train.checkpoint_every",
                "2",
                "--train.inject_nan_loss_step",
                "3",
            ]
        )


def test_skipped_steps_survive_resume(toml, tmp_path):
    flags = [
        "--config",
        toml,
        "--train.skip_nonfinite_loss",
        "true",
        "--train.inject_nan_loss_step",
        str(NAN_STEP),
        "--export.enabled",
        "true",
    ]
    straight = train.main([*flags, "--run.dir", str(tmp_path / "a")])
    train.main(
        [
            *flags,
            "--run.dir",
            str(tmp_path / "b"),
            "--train.steps",
            "4",
            "--train.checkpoint_every",
            "2",
        ]
    )
    resumed = train.main([*flags, "--run.dir", str(tmp_path / "b"), "--train.resume", "auto"])
    assert straight["skipped_steps"] == resumed["skipped_steps"] == 1
    assert straight["weights_digest"] == resumed["weights_digest"]
    # 5 sparse updates applied: the last one is update 5 (restored, not the step number)
    for run in ("a", "b"):
        assert (
            max(
                int(load_export(str(tmp_path / run / "export"), t)["last_step"].max())
                for t in straight["export"]["rows"]
            )
            == STEPS - 1
        )


# ---- hung collectives -----------------------------------------------------------------------------------
def test_hung_rank_is_reported_within_the_timeout(toml, tmp_path):
    started = time.monotonic()
    rc, out = _torchrun(
        toml,
        tmp_path,
        "--train.timeout_s",
        "3",
        "--train.hang_at_step",
        "2",
        "--train.hang_rank",
        "1",
        timeout=90,
    )
    elapsed = time.monotonic() - started
    assert rc != 0 and elapsed < 60, (elapsed, out[-3000:])
    assert "rank 1: injected hang at step 2" in out
    assert "a collective did not complete within train.timeout_s=3 s: a rank is hung or died" in out
    # ranks share the pipe: another rank's line may follow the pid without a newline
    pid = int(
        re.search(r"rank 1: injected hang at step 2 \(train\.hang_at_step\), pid (\d+)", out).group(
            1
        )
    )
    with pytest.raises(ProcessLookupError):  # torchrun took the hung rank down with the failed one
        os.kill(pid, 0)


def _collectives_under_timeout(rank, port, result_path, done_path):
    """Rank 1 never enters a collective; rank 0 times each collective type of a training step."""
    import torch.distributed as dist

    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE="2",
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
    )
    cfg = load_config(["--train.timeout_s", "1", "--run.device", "cpu"])
    embedding_group = setup_distributed(cfg).group
    # a timed-out gloo group closes its connections (later ops fail at once), so every other type gets a fresh
    # group with the same timeout; the first two ops check the groups train.py itself creates
    timeout = datetime.timedelta(seconds=cfg.train.timeout_s)
    fresh = {
        name: dist.new_group(backend="gloo", timeout=timeout)
        for name in (
            "a2a_async",
            "all_reduce",
            "all_gather_object",
            "barrier",
            "all_gather",
            "broadcast",
        )
    }
    if rank == 1:
        while not os.path.exists(done_path):
            time.sleep(0.1)
        os._exit(0)
    x = torch.zeros(2)
    ops = {
        "embedding all_to_all": lambda: dist.all_to_all_single(
            torch.empty(2), x, group=embedding_group
        ),
        "world all_reduce": lambda: dist.all_reduce(x),
        "a2a_async": lambda g: dist.all_to_all_single(
            torch.empty(2), x, [1, 1], [1, 1], group=g, async_op=True
        ).wait(),
        "all_reduce": lambda g: dist.all_reduce(x, group=g),
        "all_gather_object": lambda g: dist.all_gather_object([None, None], {"a": 1}, group=g),
        "barrier": lambda g: dist.barrier(group=g),
        "all_gather": lambda g: dist.all_gather([torch.empty(2), torch.empty(2)], x, group=g),
        "broadcast": lambda g: dist.broadcast(x, 1, group=g),
    }
    results = {}
    for name, op in ops.items():
        started = time.monotonic()
        try:
            with explain_timeouts(cfg):
                op(fresh[name]) if name in fresh else op()
            results[name] = (time.monotonic() - started, "returned")
        except RuntimeError as e:
            results[name] = (time.monotonic() - started, str(e))
    torch.save(results, result_path)
    open(done_path, "w").close()
    os._exit(0)


def test_every_collective_of_a_step_honours_the_timeout(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(
        _collectives_under_timeout,
        args=(port, str(tmp_path / "r.pt"), str(tmp_path / "done")),
        nprocs=2,
    )
    results = torch.load(tmp_path / "r.pt")
    assert len(results) == 8
    for name, (seconds, message) in results.items():
        assert 0.9 < seconds < 10 and message.startswith(
            "a collective did not complete within train.timeout_s=1 s"
        ), (name, seconds, message)
