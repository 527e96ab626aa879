"""Pieces the field-based models share (xDeepFM, AutoInt, FiBiNET): the dense features as one more field
next to the F pooled embeddings, and the first-order (linear) part of the logit.

Fields: [bottom_mlp(dense), e_1, ..., e_F], n = F + 1 vectors of the embedding dim D, so dense features
take part in every interaction, as they do in DLRM's dot interaction and DeepFM here (models/deepfm.py).
"""

import torch
from torch import nn

from models.mlp import MLP


def dense_field_tower(num_dense: int, dim: int, bottom_mlp: list[int]) -> MLP:
    """The bottom MLP that turns the dense features into one more field; its last size must be D."""
    if not bottom_mlp or bottom_mlp[-1] != dim:
        raise ValueError(
            f"model.bottom_mlp must end with the embedding dim {dim}, got {bottom_mlp}"
        )
    return MLP(num_dense, bottom_mlp)


def stack_fields(bottom: MLP, dense: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """[B, F+1, D]: the dense field first, then the pooled embeddings."""
    dense_field = bottom(dense)
    return torch.cat([dense_field.unsqueeze(1), pooled.to(dense_field.dtype)], dim=1)


class FirstOrder(nn.Module):
    """The linear part: sum_f <w_f, e_f> over the pooled embeddings (the paper's per-id scalar weights,
    which a model that sees pooled vectors only cannot have; models/deepfm.py says why) plus a Linear over
    the raw dense features, whose bias is the global bias. Output [B, 1]."""

    def __init__(self, num_dense: int, num_features: int, dim: int):
        super().__init__()
        self.dense = nn.Linear(num_dense, 1)
        self.embeddings = nn.Linear(num_features * dim, 1, bias=False)

    def forward(self, dense: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        return self.dense(dense) + self.embeddings(pooled.to(dense.dtype).flatten(1))
