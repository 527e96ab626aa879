"""predict: a checkpoint saved by a W=2 run scores the run's own eval rows with the run's AUC and logloss and
evaluate()'s per-row probabilities, at W=1 and under torchrun at W=2; bad arguments are one line; the output
file appears whole or not at all."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.support.configs import CHECKPOINT_TOML
from tests.support.training import context, load_parts
from training import checkpoint, predict
from training import evaluate as evaluate_module
from training.predict_output import read_predictions

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}


def _torchrun(*args, timeout=240):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run(
        [*cmd, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=ENV
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def toml(tmp_path_factory):
    path = tmp_path_factory.mktemp("predict") / "ckpt.toml"
    path.write_text(CHECKPOINT_TOML)
    return str(path)


@pytest.fixture(scope="module")
def w2_run(toml, tmp_path_factory):
    """A W=2 run (gloo) that checkpoints at its last step: (run dir, its summary)."""
    run_dir = tmp_path_factory.mktemp("w2")
    _torchrun(
        "train.py", "--config", toml, "--run.dir", str(run_dir), "--train.checkpoint_every", "6"
    )
    return str(run_dir), json.load(open(run_dir / "summary.json"))


def _evaluate_logits(toml, ckpt, monkeypatch):
    """The logits evaluate() scores at W=1 once the checkpoint is loaded (what it passes to auc())."""
    seen = []
    real_auc = evaluate_module.auc
    monkeypatch.setattr(evaluate_module, "auc", lambda s, y: seen.append(s) or real_auc(s, y))
    cfg, parts = load_parts(["--config", toml])
    checkpoint.load(ckpt, parts, context())
    evaluate_module.evaluate(cfg, parts, context())
    return seen[0]


@pytest.mark.slow
def test_checkpoint_of_w2_run_reproduces_its_eval(toml, w2_run, tmp_path, monkeypatch):
    run_dir, summary = w2_run
    ckpt = summary["checkpoint"]
    out = tmp_path / "preds.csv"
    result = predict.main(["--from", run_dir, "--out", str(out)])
    assert result["from"] == ckpt  # a run directory means its newest checkpoint
    assert result["rows"] == 64  # eval.samples of the trained config
    assert result["auc"] == pytest.approx(summary["eval_auc"], abs=1e-6)
    assert result["logloss"] == pytest.approx(summary["eval_logloss"], abs=1e-6)
    got = read_predictions(str(out))
    np.testing.assert_array_equal(got["row"], np.arange(64))
    logits = _evaluate_logits(toml, ckpt, monkeypatch)
    np.testing.assert_array_equal(got["probability"], torch.sigmoid(logits.double()).numpy())
    assert set(np.unique(got["label"])) <= {0.0, 1.0}

    # under torchrun: each rank scores its slice, rank 0 writes the rows in order
    out2 = tmp_path / "preds2.npy"
    proc = _torchrun("-m", "training.predict", "--from", ckpt, "--out", str(out2))
    assert proc.stdout.count("predict: 64 rows") == 1  # rank 0 alone reports
    two = read_predictions(str(out2))
    np.testing.assert_array_equal(two["row"], got["row"])
    np.testing.assert_array_equal(two["label"], got["label"])
    np.testing.assert_allclose(two["probability"], got["probability"], rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def w1_ckpt(toml, tmp_path_factory):
    import train

    run_dir = tmp_path_factory.mktemp("w1")
    train.main(["--config", toml, "--run.dir", str(run_dir), "--train.checkpoint_every", "6"])
    return str(run_dir / "checkpoints" / "step_6")


def test_overrides_and_npy_output(w1_ckpt, tmp_path):
    out = tmp_path / "p.npy"
    result = predict.main(
        ["--from", w1_ckpt, "--out", str(out), "--eval.samples", "96", "--eval.batch_size", "32"]
    )
    got = read_predictions(str(out))
    assert result["rows"] == len(got["row"]) == 96
    assert got["probability"].min() > 0 and got["probability"].max() < 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--out", "p.csv"], "predict needs --from DIR"),
        (["--from", "{ckpt}"], "predict needs --out FILE (.csv or .npy)"),
        (["--from", "{ckpt}", "--out", "p.txt"], "--out 'p.txt': unknown format '.txt'"),
        (["--from", "{tmp}/nowhere", "--out", "p.csv"], "does not exist or is not a directory"),
        (["--from", "{tmp}", "--out", "p.csv"], "is neither a checkpoint (manifest.json)"),
        (["--from", "{ckpt}", "--out", "p.csv", "--config", "x.toml"], "takes its config from"),
        (["--from", "{ckpt}", "--out", "p.csv", "--model.nope", "1"], "unknown config key"),
        (
            ["--from", "{ckpt}", "--out", "p.csv", "--optimizer.sparse", "sgd"],
            "was trained with sparse optimizer 'adam', the config has 'sgd'",
        ),
    ],
)
def test_bad_arguments_are_one_line(argv, message, w1_ckpt, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = [a.format(ckpt=w1_ckpt, tmp=tmp_path) for a in argv]
    with pytest.raises(SystemExit) as e:
        predict.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not os.path.exists(tmp_path / "p.csv")


def test_a_failure_mid_predict_leaves_the_previous_file(w1_ckpt, tmp_path, monkeypatch):
    out = tmp_path / "p.csv"
    out.write_text("previous\n")
    calls = []

    def failing(parts, cfg, env):
        def logits_of(batch):
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError("scoring failed")
            return torch.zeros(batch.labels.numel())

        return logits_of

    monkeypatch.setattr(predict, "checkpoint_scorer", failing)
    with pytest.raises(RuntimeError, match="scoring failed"):
        predict.main(["--from", w1_ckpt, "--out", str(out)])
    assert out.read_text() == "previous\n"
    assert os.listdir(tmp_path) == ["p.csv"]  # no temporary file left
