"""Every interaction of the model zoo trains through train.py at W = 2 (torchrun, gloo) on configs/tiny.toml.

The five runs share one torchrun launch (tests/support/train_many.py: train.main per model, in order), each
in its own run.dir, checked apart."""

import json
import math
import subprocess
import sys

import pytest

from tests.support.paths import ROOT

# model.name -> the keys tiny.toml lacks for it (its bottom_mlp ends with embedding.dim, as field models need)
ZOO = {
    "dcnmix": ["--model.cross_low_rank", "8", "--model.cross_experts", "2"],
    "xdeepfm": ["--model.cin_layers", "[16, 16]"],
    "autoint": [],
    "fibinet": ["--model.bilinear_type", "field_each"],
    "wide_deep": [],
}


def _args(name: str, run_dir) -> list[str]:
    return [
        *("--config", "configs/tiny.toml", "--run.dir", str(run_dir), "--model.name", name),
        *ZOO[name],
        *("--train.steps", "40", "--train.warmup_steps", "2", "--run.log_every", "10"),
        *("--eval.samples", "4096"),
    ]


@pytest.fixture(scope="module")
def zoo_runs(tmp_path_factory):
    """The W = 2 run of every model: (the launch, {model: run.dir})."""
    tmp = tmp_path_factory.mktemp("zoo")
    dirs = {name: tmp / name for name in ZOO}
    (tmp / "runs.json").write_text(json.dumps([_args(name, d) for name, d in dirs.items()]))
    cmd = [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"),
        *("-m", "tests.support.train_many", str(tmp / "runs.json")),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    return proc, dirs


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_model_trains_at_w2(name, zoo_runs):
    proc, dirs = zoo_runs
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = dirs[name]
    losses = [json.loads(line)["loss"] for line in open(run_dir / "metrics.jsonl")]
    summary = json.load(open(run_dir / "summary.json"))
    assert summary["config"]["model"]["name"] == name
    assert summary["world_size"] == 2 and summary["steps"] == 40
    assert len(losses) == 4 and all(math.isfinite(loss) for loss in losses), losses
    assert losses[-1] < losses[0], losses
    # synthetic labels come from a hidden model: a network that learns anything ranks them above chance
    assert summary["eval_auc"] > 0.7, summary["eval_auc"]
