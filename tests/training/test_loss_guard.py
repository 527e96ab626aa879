"""training.guards.LossGuard: a non-finite loss is found at the next log step or save, with no device work in
between (each step's loss is kept, not checked)."""

import pytest
import torch

from tests.support.training import context
from training.config import load_config
from training.guards import LossGuard, NonFiniteLoss
from training.launch_census import LaunchCensus


def _guard(*argv) -> LossGuard:
    return LossGuard(load_config(["--config", "configs/tiny.toml", *argv]), context(), lambda: "ck")


def _losses(*values):
    return [torch.tensor(v) for v in values]


def test_a_step_costs_no_launch():
    guard = _guard()
    with LaunchCensus() as census:
        guard.step_done(1, torch.tensor(float("nan")))
    assert census.total() == 0


def test_save_names_the_first_non_finite_step_since_the_last_check():
    guard = _guard()
    for step, loss in enumerate(_losses(0.5, 0.4, float("inf"), float("nan")), start=1):
        guard.step_done(step, loss)
    with pytest.raises(NonFiniteLoss, match=r"loss is NaN/inf at step 3; .* checkpoint: ck"):
        guard.check_before_save()


def test_a_log_step_checks_its_window_and_a_save_what_came_after():
    guard = _guard()
    for step, loss in enumerate(_losses(0.5, 0.4, 0.3), start=1):
        guard.step_done(step, loss)
    guard.check_window(torch.tensor([0.5, 0.4]), step=2)  # steps 1-2 read (all-reduced)
    guard.check_before_save()  # step 3 is finite
    guard.step_done(4, torch.tensor(float("nan")))
    with pytest.raises(NonFiniteLoss, match="at step 4;"):
        guard.check_before_save()


def test_a_skipping_run_keeps_nothing():
    guard = _guard("--train.skip_nonfinite_loss", "true")
    guard.step_done(1, torch.tensor(float("nan")))  # a skipped step changed nothing
    guard.check_before_save()


def _run(tmp_path, *argv):
    import train

    base = ["--config", "configs/tiny.toml", "--run.dir", str(tmp_path), "--train.steps", "30"]
    return train.main([*base, "--run.log_every", "5", "--eval.samples", "256", *argv])


def test_a_run_that_skips_every_step_stops(tmp_path, capsys):
    """A learning rate that blows the loss up: once more than train.max_skipped_steps steps in a row are
    skipped the run stops, naming the step and the last good checkpoint, which stays on disk."""
    with pytest.raises(
        NonFiniteLoss, match=r"at step (\d+), 4 steps in a row \(train.max_skipped_steps=3\)"
    ):
        _run(
            tmp_path,
            *("--train.skip_nonfinite_loss", "true", "--train.max_skipped_steps", "3"),
            *("--train.inject_nan_loss_step", "3", "--train.checkpoint_every", "2"),
            *("--optimizer.dense_lr", "1e30", "--optimizer.sparse_lr", "1e30"),
        )
    assert (tmp_path / "checkpoints" / "step_2" / "manifest.json").is_file()


def test_weights_that_are_not_finite_are_never_saved(tmp_path):
    """A finite loss can still leave inf weights (a huge learning rate): the save refuses them, so the
    checkpoints already on disk stay the newest."""
    with pytest.raises(NonFiniteLoss, match=r"step \d+: .* holds NaN/inf; no checkpoint written"):
        _run(
            tmp_path,
            *("--train.skip_nonfinite_loss", "true", "--train.checkpoint_every", "1"),
            *(
                "--optimizer.dense",
                "sgd",
                "--optimizer.dense_lr",
                "3e38",
                "--optimizer.sparse_lr",
                "3e38",
            ),
        )
    saved = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*"))
    assert all((tmp_path / "checkpoints" / s / "manifest.json").is_file() for s in saved)
