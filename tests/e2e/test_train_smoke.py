"""train.py end to end under torchrun (2 ranks, gloo: both runs in one launch) and single-process."""

import json
import subprocess
import sys

import pytest

import train
from tests.support.paths import ROOT


def test_single_process_run_writes_metrics(tmp_path):
    summary = train.main(
        [
            "--config",
            "configs/tiny.toml",
            "--run.dir",
            str(tmp_path),
            "--train.steps",
            "30",
            "--run.log_every",
            "10",
            "--eval.samples",
            "2048",
            "--eval.every",
            "10",
        ]
    )
    lines = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [line["step"] for line in lines] == [10, 20, 30]
    assert {
        "loss",
        "samples_per_sec",
        "stage_ms",
        "data_wait_pct",
        "exchange_bytes_per_step",
    } <= set(lines[0])
    on_disk = json.load(open(tmp_path / "summary.json"))
    assert on_disk["steps"] == 30 and on_disk["world_size"] == 1
    assert (
        on_disk["final_loss"]
        == pytest.approx(lines[-1]["loss"])
        == pytest.approx(summary["final_loss"])
    )
    assert on_disk["samples_per_sec"] > 0
    # every eval.every, then the final one
    assert [e["step"] for e in on_disk["evals"]] == [10, 20, 30]
    assert on_disk["evals"][-1] == {
        "step": 30,
        "auc": on_disk["eval_auc"],
        "logloss": on_disk["eval_logloss"],
    }
    assert on_disk["evals"][0]["auc"] != on_disk["evals"][-1]["auc"]
    assert [line["dense_lr"] for line in lines] == [0.002] * 3 and [
        line["sparse_lr"] for line in lines
    ] == [0.05] * 3


def _criteo_run(tmp) -> list[str]:
    """train.py's arguments for 2 epochs of a small preprocessed Criteo day (written under tmp)."""
    from pipeline.criteo import PreprocessOptions, preprocess
    from tests.support.criteo_reference import make_lines, write_tsv

    tsv = write_tsv(tmp / "day_0", make_lines(3000, seed=1), gz=True)
    data_dir = tmp / "data"
    config = tmp / "criteo_small.toml"  # no tables listed: the dataset brings its 26 (C1..C26)
    config.write_text("[model]\nbottom_mlp = [32, 16]\ntop_mlp = [32]\n[embedding]\ndim = 16\n")
    preprocess([tsv], data_dir, PreprocessOptions(hash_rows=[500], progress=False))
    return [
        *("--config", str(config), "--run.dir", str(tmp / "run"), "--data.path", str(data_dir)),
        *("--data.train_range", "0:2560", "--data.eval_range", "2560:3000", "--data.epochs", "2"),
        *("--eval.every_epoch", "true", "--train.global_batch_size", "256"),
        *("--train.warmup_steps", "2", "--run.log_every", "5"),
    ]


@pytest.fixture(scope="module")
def two_rank_runs(tmp_path_factory):
    """One torchrun launch (tests/support/train_many.py) of both W = 2 runs below: (the launch,
    {run: summary.json path})."""
    tmp = tmp_path_factory.mktemp("w2")
    runs = {
        "tiny": ["--config", "configs/tiny.toml", "--run.dir", str(tmp / "tiny")],
        "criteo": _criteo_run(tmp),
    }
    (tmp / "runs.json").write_text(json.dumps(list(runs.values())))
    cmd = [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"),
        *("-m", "tests.support.train_many", str(tmp / "runs.json")),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    return proc, {"tiny": tmp / "tiny" / "summary.json", "criteo": tmp / "run" / "summary.json"}


@pytest.mark.slow
def test_torchrun_two_ranks_learns(two_rank_runs):
    proc, summaries = two_rank_runs
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.load(open(summaries["tiny"]))
    assert summary["world_size"] == 2 and summary["steps"] == 300
    assert summary["eval_auc"] > 0.70
    assert summary["exchange_bytes_per_step"] > 0
    for key in ("global_batch_size", "final_loss", "eval_logloss", "samples_per_sec", "device"):
        assert key in summary


@pytest.mark.slow
def test_torchrun_trains_from_preprocessed_criteo(two_rank_runs):
    proc, summaries = two_rank_runs
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.load(open(summaries["criteo"]))
    assert summary["world_size"] == 2
    assert summary["steps"] == 20  # 2 epochs x 2560 / 256
    assert sorted(summary["plan"]) == sorted(f"C{i}" for i in range(1, 27))
    assert 0.0 <= summary["eval_auc"] <= 1.0 and summary["eval_logloss"] > 0
    assert [e["step"] for e in summary["evals"]] == [10, 20]  # after each epoch


@pytest.mark.parametrize(
    "backend,device,local_world,gpus,want",
    [
        ("auto", "auto", 2, 0, ("gloo", "cpu", False)),
        (
            "auto",
            "auto",
            2,
            2,
            ("nccl", "cuda:1", False),
        ),  # one GPU per rank: nccl, rank 1 on cuda:1
        # two ranks share one GPU: gloo, and it says so
        ("auto", "auto", 2, 1, ("gloo", "cuda:0", True)),
        ("gloo", "auto", 4, 1, ("gloo", "cuda:0", False)),
        ("auto", "cpu", 2, 8, ("gloo", "cpu", False)),
        ("auto", "auto", 3, 2, ("gloo", "cuda:1", True)),  # local rank 1 of 3 on 2 GPUs
    ],
)
def test_pick_device(backend, device, local_world, gpus, want):
    from training.config import load_config
    from training.distributed import pick_device

    cfg = load_config(["--run.backend", backend, "--run.device", device])
    got_backend, got_device, note = pick_device(cfg, 1, local_world, gpus)
    assert (got_backend, str(got_device), bool(note)) == want


def test_pick_device_refuses_nccl_without_a_gpu_per_rank():
    from training.config import load_config
    from training.distributed import pick_device

    with pytest.raises(ValueError, match="nccl needs one GPU per rank.*--run.backend gloo"):
        pick_device(load_config(["--run.backend", "nccl"]), 0, 2, 1)
    with pytest.raises(RuntimeError, match="no CUDA device"):
        pick_device(load_config(["--run.device", "cuda"]), 0, 1, 0)


@pytest.mark.slow
def test_compiled_dense_network_trains_the_same(tmp_path):
    """model.compile on (torch.compile, CPU inductor here) and off give the same losses and weights digest
    to round-off; the compiled model is only used for training steps."""
    args = [
        "--config",
        "configs/tiny.toml",
        "--train.steps",
        "6",
        "--train.warmup_steps",
        "1",
        "--run.log_every",
        "2",
        "--eval.samples",
        "512",
        "--model.bottom_mlp",
        "[16]",
        "--model.top_mlp",
        "[8]",
    ]
    eager = train.main([*args, "--run.dir", str(tmp_path / "eager"), "--model.compile", "off"])
    compiled = train.main([*args, "--run.dir", str(tmp_path / "compiled"), "--model.compile", "on"])
    lines = [
        [json.loads(x)["losses"] for x in open(tmp_path / d / "metrics.jsonl")]
        for d in ("eager", "compiled")
    ]
    assert lines[0] and len(lines[0]) == len(lines[1])
    for a, b in zip(lines[0], lines[1], strict=True):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6)
    assert compiled["eval_auc"] == pytest.approx(eager["eval_auc"], abs=1e-4)
