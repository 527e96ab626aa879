"""bench/e2e.py runs train.py and bench/report.py renders its results."""

import json

from bench import e2e, report
from training.stages import STAGES


def test_e2e_then_report(tmp_path):
    # the report's CPU rows, also on a GPU machine
    overrides = "--train.steps 12 --train.warmup_steps 2 --run.log_every 4 --eval.samples 1024 --run.device cpu"
    e2e.main(
        [
            "--config",
            "configs/tiny.toml",
            "--world-sizes",
            "1",
            "--out",
            str(tmp_path),
            "--",
            *overrides.split(),
        ]
    )
    result = json.load(open(tmp_path / "e2e_tiny_w1.json"))
    assert result["summary"]["steps"] == 12 and result["git_commit"] and result["device"] == "cpu"
    alltoall = tmp_path / "alltoall.jsonl"
    alltoall.write_text(
        json.dumps(
            {"date": "d", "git_commit": "c", "world_size": 2, "bytes": 1024, "busbw_GBps": 1.0}
        )
        + "\n"
    )
    report.main([str(tmp_path), "--alltoall-jsonl", str(alltoall)])
    table = (tmp_path / "report.md").read_text()
    assert "| tiny_w1 | cpu | 1 |" in table
    assert "| run | " + " | ".join(STAGES) + " |" in table
    stage_ms = result["summary"]["stage_ms"]
    assert set(stage_ms) == set(STAGES) and all(v >= 0 for v in stage_ms.values())
    assert (
        f"| tiny_w1 | {stage_ms['data_wait']:.2f} | {stage_ms['h2d']:.2f} | {stage_ms['input_dist']:.2f} |"
        in table
    )

    # a W=2 result (the W=1 run relabelled) is projected stage by stage from the W=1 run
    w2 = {
        **result,
        "name": "tiny_w2",
        "world_size": 2,
        "summary": {**result["summary"], "exchange_bytes_per_rank": 3e6, "allreduce_bytes": 1e6},
    }
    (tmp_path / "e2e_tiny_w2.json").write_text(json.dumps(w2))
    report.main([str(tmp_path), "--alltoall-jsonl", str(alltoall)])
    row = next(
        line
        for line in (tmp_path / "report.md").read_text().splitlines()
        if line.startswith("| tiny_w2 projected")
    )
    cells = [c.strip() for c in row.strip("|").split("|")][1:]
    assert cells[: len(STAGES)] == [f"{stage_ms[k] / 2:.2f}" for k in STAGES]
    # all-to-all 3e6 B * 1/2 / 1 GB/s = 1.5 ms; all-reduce 2 * 1/2 * 1e6 B / 1 GB/s = 1 ms
    assert cells[len(STAGES) : len(STAGES) + 2] == ["1.50", "1.00"]
    for png in ("throughput.png", "stages.png", "mfu.png"):
        assert (tmp_path / png).stat().st_size > 1000
