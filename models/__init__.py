"""Dense networks. They receive pooled embeddings as a tensor [B, F, D]; they know nothing of
how embeddings are stored or sharded."""

from torch import nn

from models.dcnv2 import DCNv2
from models.deepfm import DeepFM
from models.dlrm import DLRM
from models.init import init_weights_
from models.interactions import CrossNetwork, DotInteraction, FactorizationMachine
from models.mlp import MLP
from models.network import flatten_linears_


def build_model(cfg, num_dense: int, num_features: int, dim: int, seed: int = 0) -> nn.Module:
    """The dense network named by cfg.name (a training.config.ModelConfig), initialised by cfg.init (seed: run.seed)."""
    # one buffer for the Linear parameters: bf16 autocast casts them in one kernel (models.network)
    return flatten_linears_(
        init_weights_(_architecture(cfg, num_dense, num_features, dim), cfg.init, seed)
    )


def _architecture(cfg, num_dense: int, num_features: int, dim: int) -> nn.Module:
    if cfg.name == "dlrm":
        return DLRM(num_dense, num_features, dim, cfg.bottom_mlp, cfg.top_mlp)
    if cfg.name == "dcnv2":
        return DCNv2(
            num_dense,
            num_features,
            dim,
            cfg.bottom_mlp,
            cfg.top_mlp,
            cross_layers=cfg.cross_layers,
            cross_low_rank=cfg.cross_low_rank,
            structure=cfg.dcn_structure,
            deep_mlp=cfg.deep_mlp,
        )
    if cfg.name == "deepfm":
        return DeepFM(num_dense, num_features, dim, cfg.bottom_mlp, cfg.deep_mlp)
    raise ValueError(f"model.name {cfg.name!r} is not available (expected dlrm, dcnv2 or deepfm)")


__all__ = [
    "DCNv2",
    "DLRM",
    "MLP",
    "CrossNetwork",
    "DeepFM",
    "DotInteraction",
    "FactorizationMachine",
    "build_model",
]
