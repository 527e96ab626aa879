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
    report.main([str(tmp_path)])
    table = (tmp_path / "report.md").read_text()
    assert "| tiny_w1 | cpu | 1 |" in table
    assert "| run | " + " | ".join(STAGES) + " |" in table
    stage_ms = result["summary"]["stage_ms"]
    assert set(stage_ms) == set(STAGES) and all(v >= 0 for v in stage_ms.values())
    assert (
        f"| tiny_w1 | {stage_ms['data_wait']:.2f} | {stage_ms['h2d']:.2f} | {stage_ms['input_dist']:.2f} |"
        in table
    )
    # measured runs only: a W > 1 step is not projected from a W = 1 run (bench/scaling.py projects from a
    # measured W > 1 run)
    assert "project" not in table.replace("projections to more GPUs", "")
    for png in ("throughput.png", "stages.png", "mfu.png"):
        assert (tmp_path / png).stat().st_size > 1000
