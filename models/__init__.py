"""Dense networks. They receive pooled embeddings as a tensor [B, F, D] (tables of several dims:
[B, sum of the features' dims], models.projection); they know nothing of how embeddings are stored or
sharded."""

from torch import nn

from models.autoint import AutoInt
from models.dcnmix import DCNMix
from models.dcnv2 import DCNv2
from models.deepfm import DeepFM
from models.dlrm import DLRM
from models.fibinet import FiBiNET
from models.init import init_weights_
from models.interactions import CrossNetwork, DotInteraction, FactorizationMachine
from models.mlp import MLP
from models.network import flatten_linears_
from models.projection import CONCAT_MODELS, FieldProjection, network_shape
from models.wide_deep import WideDeep
from models.xdeepfm import XDeepFM

# model.name -> the network, built from (cfg, num_dense, num_features, dim)
ARCHITECTURES = {
    "dlrm": lambda c, *s: DLRM(*s, c.bottom_mlp, c.top_mlp),
    "dcnv2": lambda c, *s: DCNv2(
        *s,
        c.bottom_mlp,
        c.top_mlp,
        cross_layers=c.cross_layers,
        cross_low_rank=c.cross_low_rank,
        structure=c.dcn_structure,
        deep_mlp=c.deep_mlp,
    ),
    "deepfm": lambda c, *s: DeepFM(*s, c.bottom_mlp, c.deep_mlp),
    "dcnmix": lambda c, *s: DCNMix(
        *s,
        c.bottom_mlp,
        c.top_mlp,
        cross_layers=c.cross_layers,
        cross_low_rank=c.cross_low_rank,
        cross_experts=c.cross_experts,
        structure=c.dcn_structure,
        deep_mlp=c.deep_mlp,
    ),
    "xdeepfm": lambda c, *s: XDeepFM(*s, c.bottom_mlp, c.cin_layers, c.deep_mlp),
    "autoint": lambda c, *s: AutoInt(
        *s, c.bottom_mlp, c.attention_layers, c.attention_heads, c.attention_dim, c.deep_mlp
    ),
    "fibinet": lambda c, *s: FiBiNET(
        *s, c.bottom_mlp, c.senet_reduction, c.bilinear_type, c.deep_mlp
    ),
    "wide_deep": lambda c, *s: WideDeep(*s, c.bottom_mlp, c.deep_mlp),
}


def build_model(
    cfg,
    num_dense: int,
    num_features: int,
    dim: int,
    seed: int = 0,
    feature_dims: list[int] | None = None,
    feature_tables: list[str] | None = None,
) -> nn.Module:
    """The dense network named by cfg.name (a training.config.ModelConfig), initialised by cfg.init (seed: run.seed).

    feature_dims, feature_tables: each feature's embedding dim and table, where tables differ from dim
    (models.projection says what the network then takes)."""
    if cfg.name not in ARCHITECTURES:
        raise ValueError(
            f"model.name {cfg.name!r} is not available (expected one of {', '.join(ARCHITECTURES)})"
        )
    features, width, project = network_shape(cfg.name, num_features, dim, feature_dims)
    network = ARCHITECTURES[cfg.name](cfg, num_dense, features, width)
    if project:
        network.project = FieldProjection(feature_dims, feature_tables, dim)
    # one buffer for the Linear parameters: bf16 autocast casts them in one kernel (models.network)
    return flatten_linears_(init_weights_(network, cfg.init, seed))


__all__ = [
    "ARCHITECTURES",
    "CONCAT_MODELS",
    "FieldProjection",
    "DCNv2",
    "DLRM",
    "MLP",
    "AutoInt",
    "CrossNetwork",
    "DCNMix",
    "DeepFM",
    "DotInteraction",
    "FactorizationMachine",
    "FiBiNET",
    "WideDeep",
    "XDeepFM",
    "build_model",
]
