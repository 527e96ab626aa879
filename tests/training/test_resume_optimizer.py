"""Resuming with another dense optimizer than the checkpoint's: one line naming both and the ways on."""

import pytest
import torch

import train
from tests.training.test_strict_json import TOML
from training.config import ConfigError
from training.resume_checks import check_dense_optimizer


def test_resume_with_another_dense_optimizer_names_both(tmp_path, capsys):
    config = tmp_path / "small.toml"
    config.write_text(TOML)
    run = tmp_path / "run"
    argv = ["--config", str(config), "--run.dir", str(run), "--train.resume", "auto"]
    train.main([*argv, "--train.steps", "2"])  # Adam, the default
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        train.main([*argv, "--optimizer.dense", "sgd"])
    assert exit_.value.code == 2
    step_2 = run / "checkpoints" / "step_2"
    assert capsys.readouterr().err == (
        f"error: checkpoint {step_2} was trained with dense optimizer 'adam', the config has "
        "optimizer.dense 'sgd'; its state cannot be resumed by another optimizer: resume with "
        f"--optimizer.dense adam, or start a new run (another run.dir) from its weights with "
        f"--train.init_from {step_2} (the dense optimizer then starts fresh)\n"
    )
    summary = train.main([*argv, "--train.steps", "3"])  # the same optimizer resumes
    assert summary["steps"] == 3


def test_same_optimizer_or_no_record_passes():
    adagrad = torch.optim.Adagrad([torch.nn.Parameter(torch.zeros(2))])
    check_dense_optimizer("c", {"config": {"optimizer": {"dense": "adagrad"}}}, adagrad)
    check_dense_optimizer("c", {}, adagrad)
    with pytest.raises(ConfigError, match="^checkpoint c was trained with dense optimizer 'adam'"):
        check_dense_optimizer("c", {"config": {"optimizer": {"dense": "adam"}}}, adagrad)
