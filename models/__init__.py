"""Dense networks. They receive pooled embeddings as a tensor [B, F, D]; they know nothing of
how embeddings are stored or sharded."""

from torch import nn

from models.dlrm import DLRM
from models.interactions import DotInteraction
from models.mlp import MLP


def build_model(cfg, num_dense: int, num_features: int, dim: int) -> nn.Module:
    """The dense network named by cfg.name (a config.ModelConfig)."""
    if cfg.name == "dlrm":
        return DLRM(num_dense, num_features, dim, cfg.bottom_mlp, cfg.top_mlp)
    raise ValueError(f"model.name {cfg.name!r} is not available (expected dlrm, dcnv2 or deepfm)")


__all__ = ["DLRM", "MLP", "DotInteraction", "build_model"]
