"""Wide & Deep (Cheng et al. 2016): logit = wide + deep.

Wide: one Linear over [raw dense features, the F pooled embeddings flattened]. The paper's wide part reads sparse
ids and their cross products; a network here sees pooled vectors only, never ids, so the wide part is linear in
them (as DeepFM's first order is: models/deepfm.py). Its bias is the global bias.
Deep: an MLP over [bottom_mlp(dense), the pooled embeddings flattened] (the paper's concatenation of embeddings
and dense features; bottom_mlp = [] feeds the raw dense features, any last size works), a 1-unit logit appended.
Config mapping (training.config.ModelConfig): bottom_mlp, deep_mlp; top_mlp, cross_* are unused.
"""

import torch
from torch import nn

from models.mlp import MLP
from models.network import Network


class WideDeep(Network):
    """Dense part of Wide & Deep. Input: dense [B, Dd] and pooled embeddings [B, F, D]; output logits [B]."""

    def __init__(
        self,
        num_dense: int,
        num_features: int,
        dim: int,
        bottom_mlp: list[int],
        deep_mlp: list[int],
    ):
        super().__init__()
        self.wide = nn.Linear(num_dense + num_features * dim, 1)
        self.bottom = MLP(num_dense, bottom_mlp)
        self.deep = MLP(
            self.bottom.out_features + num_features * dim, [*deep_mlp, 1], last_activation=False
        )

    def logits(self, dense: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        embeddings = pooled.to(dense.dtype).flatten(1)
        wide = self.wide(torch.cat([dense, embeddings], dim=1))
        deep = self.deep(torch.cat([self.bottom(dense), embeddings], dim=1))
        return (wide + deep).squeeze(1)
