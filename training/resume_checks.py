"""What a resume checks before torch loads a checkpoint's dense optimizer state: the state of one optimizer
does not fit another (Adam's exp_avg is no SGD momentum; torch fails later with a bare KeyError)."""

from __future__ import annotations

import torch

from training.config import ConfigError


def dense_optimizer_name(optimizer: torch.optim.Optimizer) -> str:
    """The optimizer.dense name of a torch optimizer (torch.optim.Adam -> "adam")."""
    return type(optimizer).__name__.lower()


def check_dense_optimizer(path: str, manifest: dict, optimizer: torch.optim.Optimizer) -> None:
    """ConfigError naming both optimizers and the ways on when the checkpoint at path was trained with
    another dense optimizer than this run's."""
    saved = manifest.get("config", {}).get("optimizer", {}).get("dense")
    current = dense_optimizer_name(optimizer)
    if saved is None or saved == current:
        return
    raise ConfigError(
        f"checkpoint {path} was trained with dense optimizer {saved!r}, the config has "
        f"optimizer.dense {current!r}; its state cannot be resumed by another optimizer: resume with "
        f"--optimizer.dense {saved}, or start a new run (another run.dir) from its weights with "
        f"--train.init_from {path} (the dense optimizer then starts fresh)"
    )
