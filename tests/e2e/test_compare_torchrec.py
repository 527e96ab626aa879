"""bench/compare_torchrec.py: TorchRec's DMP and RecFuse train the same model on the same data (W = 1, 2, gloo)."""

import json
import sys

import pytest

from bench import compare_torchrec

SMALL = [
    "--train.steps",
    "30",
    "--train.warmup_steps",
    "5",
    "--run.log_every",
    "10",
    "--eval.samples",
    "4096",
]


def test_missing_torchrec_exits_2_with_install_command(monkeypatch, capsys):
    # import -> ImportError, even if already imported
    for name in ("torchrec", "torchrec.distributed"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(SystemExit) as exc:
        compare_torchrec.main(["--world-sizes", "1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert (
        "TorchRec is not importable" in err
        and "pip install --no-deps torchrec==1.8.0 fbgemm-gpu-cpu==1.8.0" in err
    )


@pytest.mark.slow
def test_torchrec_trains_the_same_function_as_recfuse(tmp_path, capsys):
    pytest.importorskip("torchrec")
    out = tmp_path / "cmp.json"
    compare_torchrec.main(["--world-sizes", "1,2", "--out", str(out), "--", *SMALL])
    printed = capsys.readouterr().out
    assert (
        "W=1: RecFuse/TorchRec samples/s" in printed
        and "W=2: RecFuse/TorchRec samples/s" in printed
    )
    report = json.load(open(out))
    assert (
        report["steps"] == 30 and report["torchrec"] == "1.8.0" and len(report["git_commit"]) >= 7
    )
    by_w = {r["world_size"]: r for r in report["results"]}
    assert sorted(by_w) == [1, 2]
    for w, r in by_w.items():
        rf, tr = r["recfuse"], r["torchrec"]
        assert len(rf["losses"]) == len(tr["losses"]) == 30
        # same initial rows, dense init and batches: the first loss is the same computation
        assert tr["losses"][0] == pytest.approx(rf["losses"][0], abs=1e-6)
        # same optimizers (fused row-wise Adagrad, Adam): the curves agree to fp32 round-off
        assert max(abs(a - b) for a, b in zip(rf["losses"], tr["losses"], strict=True)) < 1e-4, w
        assert rf["eval_auc"] > 0.6 and tr["eval_auc"] > 0.6
        assert tr["eval_auc"] == pytest.approx(rf["eval_auc"], abs=1e-3)
        assert tr["samples_per_sec"] > 0 and rf["samples_per_sec"] > 0
        assert r["ratio_recfuse_over_torchrec"] == pytest.approx(
            rf["samples_per_sec"] / tr["samples_per_sec"]
        )
        # "mirror": TorchRec placed every table the way RecFuse's planner did
        mirrored = {"replicated": "data_parallel", "table": "table_wise"}
        assert {t: v["sharding"] for t, v in tr["plan"].items()} == {
            t: mirrored[k] for t, k in rf["plan"].items()
        }
    # W=2 really shards: table-wise tables on both ranks; and it trains what W=1 trains
    assert {
        tuple(v["ranks"])
        for v in by_w[2]["torchrec"]["plan"].values()
        if v["sharding"] == "table_wise"
    } == {(0,), (1,)}
    assert (
        max(
            abs(a - b)
            for a, b in zip(
                by_w[1]["torchrec"]["losses"], by_w[2]["torchrec"]["losses"], strict=True
            )
        )
        < 1e-4
    )
