"""DeepFM (Guo et al. 2017): logit = first-order + FM second-order + deep MLP, all over the same fields.

Fields: the F pooled embeddings plus one more, the dense features through bottom_mlp (which must end
with the embedding dim D), so dense features take part in the pairwise interactions the way they do in
DLRM's dot interaction.

First order: the paper gives every id a scalar weight (a 1-dim embedding table). Models here only see
pooled D-dim vectors, never ids, so each feature's scalar is a learned projection <w_f, e_f> of its
pooled embedding (one Linear(F*D -> 1) over the flattened embeddings is exactly sum_f <w_f, e_f>).
Dense features enter the first order through their own Linear(Dd -> 1), whose bias is the global bias.
This keeps the embedding tables single-width (no extra 1-dim tables to shard and exchange).

Config mapping: bottom_mlp = dense projection to D; deep_mlp = deep hidden sizes (a 1-unit logit layer
is appended); top_mlp, cross_* are unused.
"""

import torch
from torch import nn

from models.interactions import FactorizationMachine
from models.mlp import MLP
from models.network import Network


class DeepFM(Network):
    """Dense part of DeepFM. Input: dense [B, Dd] and pooled embeddings [B, F, D]; output logits [B]."""

    def __init__(
        self,
        num_dense: int,
        num_features: int,
        dim: int,
        bottom_mlp: list[int],
        deep_mlp: list[int],
    ):
        super().__init__()
        if not bottom_mlp or bottom_mlp[-1] != dim:
            raise ValueError(
                f"model.bottom_mlp must end with the embedding dim {dim}, got {bottom_mlp}"
            )
        self.dense_first_order = nn.Linear(num_dense, 1)
        self.embedding_first_order = nn.Linear(num_features * dim, 1, bias=False)
        self.bottom = MLP(num_dense, bottom_mlp)
        self.fm = FactorizationMachine()
        self.deep = MLP((num_features + 1) * dim, [*deep_mlp, 1], last_activation=False)

    def logits(self, dense: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        dense_field = self.bottom(dense)
        pooled = pooled.to(dense_field.dtype)
        fields = torch.cat([dense_field.unsqueeze(1), pooled], dim=1)  # [B, F+1, D]
        first_order = self.dense_first_order(dense) + self.embedding_first_order(pooled.flatten(1))
        logit = first_order + self.fm(fields) + self.deep(fields.flatten(1))
        return logit.squeeze(1)
