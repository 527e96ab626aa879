"""One run per run.dir: a second run is refused while another process holds the lock (at W = 1 and, without
hanging, at W = 2), a stale lock is taken over, a torchrun restart takes its own lock back, and a new run
refuses a run.dir holding another config's output."""

import json
import os
import socket
import subprocess
import sys

import pytest

import train
from tests.support.configs import CHECKPOINT_TOML
from tests.support.paths import ROOT
from training.run_lock import LOCK_NAME, RunDirInUse, RunLock

REFUSED = r"run.dir '.*' is in use by another run: host {host} pid {pid} started .*; wait for it to finish"
HOLDER = (
    "import sys; from training.run_lock import RunLock; RunLock(sys.argv[1]).acquire(); "
    "print('held', flush=True); sys.stdin.read()"
)


@pytest.fixture(scope="module")
def toml(tmp_path_factory):
    path = tmp_path_factory.mktemp("run_lock") / "ckpt.toml"
    path.write_text(CHECKPOINT_TOML)
    return str(path)


def test_second_run_is_refused_and_a_stale_lock_taken_over(toml, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(
            RunDirInUse, match=REFUSED.format(host=socket.gethostname(), pid=holder.pid)
        ):
            train.main(["--config", toml, "--run.dir", str(run_dir)])
        assert os.listdir(run_dir) == [LOCK_NAME]  # refused before writing anything
    finally:
        holder.kill()  # dies holding it: the lock file stays, its flock goes with the process
        holder.wait()
    assert json.loads((run_dir / LOCK_NAME).read_text())["pid"] == holder.pid
    capsys.readouterr()
    train.main(["--config", toml, "--run.dir", str(run_dir)])
    log = capsys.readouterr().out
    assert f"pid {holder.pid} started" in log and "which is gone: taking it over" in log
    assert not (run_dir / LOCK_NAME).exists()  # released at the end of the run


def test_a_torchrun_restart_takes_its_job_lock_back(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-7")
    first = RunLock(str(tmp_path)).acquire()
    assert first.takeover_note() is None
    os.close(first.fd)  # the process died: its flock is gone, the file stays
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    again = RunLock(str(tmp_path)).acquire()
    assert again.takeover_note().endswith("taken back for restart 1 of job job-7")
    with pytest.raises(RunDirInUse, match=r"\(job job-7\)"):
        RunLock(str(tmp_path)).acquire()
    again.release()


def test_a_new_run_refuses_another_configs_output(toml, tmp_path):
    run_dir = str(tmp_path)
    args = ["--config", toml, "--run.dir", run_dir, "--train.checkpoint_every", "3"]
    train.main(args)
    train.main(args)  # the same config again: the same output
    with pytest.raises(
        RunDirInUse,
        match=r"holds another run's output \(.*summary.json: train.steps 6 -> 4\); pass "
        r"--train.resume auto to continue that run, another --run.dir, or remove its files",
    ):
        train.main([*args, "--train.steps", "4"])
    os.remove(os.path.join(run_dir, "summary.json"))  # a run that crashed: its checkpoints remain
    with pytest.raises(
        RunDirInUse, match=r"step_6.manifest.json: optimizer.sparse \"adam\" -> \"adagrad\""
    ):
        train.main([*args, "--optimizer.sparse", "adagrad"])
    assert train.main([*args, "--train.resume", "auto", "--train.steps", "8"])["steps"] == 8


@pytest.mark.slow
def test_two_rank_refusal_does_not_hang(toml, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    lock = RunLock(str(run_dir)).acquire()
    try:
        out = subprocess.run(
            [
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
                "--train.timeout_s",
                "60",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=240,
            env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
        )
    finally:
        lock.release()
    assert out.returncode != 0
    # both ranks stop with rank 0's refusal, neither waits for the other
    refusals = out.stderr.count(f"RunDirInUse: run.dir '{run_dir}' is in use by another run")
    assert refusals == 2, out.stderr[-3000:]
    assert f"pid {os.getpid()} started" in out.stderr
