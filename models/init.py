"""Dense weight initialisation schemes (training.config.ModelConfig.init).

"torch" leaves nn.Linear's default (Kaiming-uniform weights, uniform biases, from the global RNG that training.build
seeds with run.seed). "dlrm" is facebookresearch/dlrm's create_mlp: weight ~ N(0, sqrt(2 / (fan_in + fan_out))),
bias ~ N(0, sqrt(1 / fan_out)); on a Criteo Kaggle sample it closes the AUC gap to dlrm.

DCN-v2 cross layers have no dlrm counterpart. There "dlrm" keeps the same weight law, which is Xavier normal, the
init torchrec's LowRankCrossNet (the MLPerf DCN-v2 reference's cross net) gives its kernels (here each low-rank
factor with its own fans), and sets the biases to zero as that net does: the bias sits inside
x0 * (W x + b) + x, so a random b would rescale every input feature by a random (1 + b_i) before any training,
where a zero b leaves the cross net the identity plus a small random term.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from models.interactions import CrossNetwork

INIT_SCHEMES = ("torch", "dlrm")


@torch.no_grad()
def dlrm_init_(model: nn.Module, seed: int) -> nn.Module:
    """Re-draw every nn.Linear of `model` the dlrm way from a generator seeded by `seed` (CPU, so the draw is the
    same on every device); modules in model.modules() order, weight before bias."""
    generator = torch.Generator().manual_seed(seed)
    cross = {id(m) for c in model.modules() if isinstance(c, CrossNetwork) for m in c.modules()}
    for module in model.modules():
        if not isinstance(module, nn.Linear):
            continue
        fan_out, fan_in = module.weight.shape
        module.weight.copy_(
            torch.normal(
                0.0, math.sqrt(2.0 / (fan_in + fan_out)), module.weight.shape, generator=generator
            )
        )
        if module.bias is None:
            continue
        if id(module) in cross:
            module.bias.zero_()
        else:
            module.bias.copy_(
                torch.normal(0.0, math.sqrt(1.0 / fan_out), module.bias.shape, generator=generator)
            )
    return model


def init_weights_(model: nn.Module, scheme: str, seed: int) -> nn.Module:
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"model.init is {scheme!r}; expected one of {INIT_SCHEMES}")
    return dlrm_init_(model, seed) if scheme == "dlrm" else model
