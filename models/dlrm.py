"""DLRM (Naumov et al. 2019): bottom MLP -> dot interaction with pooled embeddings -> top MLP."""

import torch

from models.interactions import DotInteraction
from models.mlp import MLP
from models.network import Network


class DLRM(Network):
    """Dense part of DLRM. Input: dense [B, Dd] and pooled embeddings [B, F, D]; output logits [B].

    The bottom MLP's last size must equal the embedding dim D so the dense vector joins the
    dot products.
    """

    casts_dense_first = True  # the bottom MLP's first Linear

    def __init__(
        self, num_dense: int, num_features: int, dim: int, bottom_mlp: list[int], top_mlp: list[int]
    ):
        super().__init__()
        if not bottom_mlp or bottom_mlp[-1] != dim:
            raise ValueError(
                f"model.bottom_mlp must end with the embedding dim {dim}, got {bottom_mlp}"
            )
        self.bottom = MLP(num_dense, bottom_mlp)
        self.interaction = DotInteraction(num_features)
        self.top = MLP(dim + self.interaction.num_pairs, [*top_mlp, 1], last_activation=False)

    def logits(self, dense: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        x = self.bottom(dense)
        return self.top(self.interaction(x, pooled.to(x.dtype))).squeeze(1)
