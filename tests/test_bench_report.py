"""bench/e2e.py runs train.py and bench/report.py renders its results."""

import json

from bench import e2e, report


def test_e2e_then_report(tmp_path):
    e2e.main(["--config", "configs/tiny.toml", "--world-sizes", "1", "--out", str(tmp_path), "--",
              "--train.steps", "12", "--train.warmup_steps", "2", "--run.log_every", "4", "--eval.samples", "1024"])
    result = json.load(open(tmp_path / "e2e_tiny_w1.json"))
    assert result["summary"]["steps"] == 12 and result["git_commit"] and result["device"] == "cpu"
    alltoall = tmp_path / "alltoall.jsonl"
    alltoall.write_text(json.dumps({"date": "d", "git_commit": "c", "world_size": 2, "bytes": 1024,
                                    "busbw_GBps": 1.0}) + "\n")
    report.main([str(tmp_path), "--alltoall-jsonl", str(alltoall)])
    table = (tmp_path / "report.md").read_text()
    assert "| tiny_w1 | cpu | 1 |" in table
    for png in ("throughput.png", "stages.png", "mfu.png"):
        assert (tmp_path / png).stat().st_size > 1000
