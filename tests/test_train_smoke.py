"""train.py end to end under torchrun (2 ranks, gloo) and single-process."""

import json
import os
import subprocess
import sys

import pytest

import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_single_process_run_writes_metrics(tmp_path):
    summary = train.main(["--config", "configs/tiny.toml", "--run.dir", str(tmp_path), "--train.steps", "30",
                          "--run.log_every", "10", "--eval.samples", "2048"])
    lines = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [line["step"] for line in lines] == [10, 20, 30]
    assert {"loss", "samples_per_sec", "stage_ms", "data_wait_pct", "exchange_bytes_per_step"} <= set(lines[0])
    on_disk = json.load(open(tmp_path / "summary.json"))
    assert on_disk["steps"] == 30 and on_disk["world_size"] == 1
    assert on_disk["final_loss"] == pytest.approx(lines[-1]["loss"]) == pytest.approx(summary["final_loss"])
    assert on_disk["samples_per_sec"] > 0


@pytest.mark.slow
def test_torchrun_two_ranks_learns(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
           "--config", "configs/tiny.toml", "--run.dir", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.load(open(tmp_path / "summary.json"))
    assert summary["world_size"] == 2 and summary["steps"] == 300
    assert summary["eval_auc"] > 0.70
    assert summary["exchange_bytes_per_step"] > 0
    for key in ("global_batch_size", "final_loss", "eval_logloss", "samples_per_sec", "device"):
        assert key in summary
