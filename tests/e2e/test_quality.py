"""bench/quality.py: several seeds of train.py, mean +- std per evaluation point, plot and JSON."""

import json
import statistics

from bench import quality


def test_two_seeds_on_tiny(tmp_path, capsys):
    result = quality.main(
        [
            "--config",
            "configs/tiny.toml",
            "--seeds",
            "0,1",
            "--out",
            str(tmp_path),
            "--",
            "--train.steps",
            "20",
            "--eval.every",
            "10",
            "--eval.samples",
            "2048",
            "--run.log_every",
            "10",
            "--train.warmup_steps",
            "2",
            "--run.device",
            "cpu",
        ]
    )
    on_disk = json.load(open(tmp_path / "quality.json"))
    assert on_disk["seeds"] == [0, 1] and on_disk["git_commit"] and on_disk["device"] == "cpu"
    for seed in (0, 1):  # each seed's values are its run's summary.json evals
        summary = json.load(open(tmp_path / f"seed_{seed}" / "summary.json"))
        assert summary["config"]["run"]["seed"] == seed
        assert on_disk["runs"][str(seed)]["evals"] == summary["evals"]
        assert [e["step"] for e in summary["evals"]] == [10, 20]
    runs = [on_disk["runs"][s]["evals"] for s in ("0", "1")]
    assert runs[0] != runs[1]  # the seeds differ
    table, printed = (tmp_path / "report.md").read_text(), capsys.readouterr().out
    for i, row in enumerate(on_disk["points"]):
        auc = [r[i]["auc"] for r in runs]
        logloss = [r[i]["logloss"] for r in runs]
        assert row["auc_mean"] == statistics.fmean(auc) and row["auc_std"] == statistics.stdev(auc)
        line = (
            f"| {row['step']} | {row['step'] * 512} | {statistics.fmean(auc):.4f} ± {statistics.stdev(auc):.4f} | "
            f"{statistics.fmean(logloss):.4f} ± {statistics.stdev(logloss):.4f} | 2 |"
        )
        assert line in table and line in printed
    assert result["points"] == on_disk["points"]
    assert (tmp_path / "quality.png").stat().st_size > 1000
