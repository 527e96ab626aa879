"""FiBiNET (Huang et al. 2019): SENET re-weights the n = F + 1 fields (models/fields.py: the dense features
through bottom_mlp are field 0), a bilinear interaction combines every pair of fields, of the original
embeddings E and of the re-weighted ones V, and a DNN reads both; plus the linear part.

SENET (section 3.3): z_f = mean_d e_{f,d}; a = sigmoid(W_2 ReLU(W_1 z)), W_1: [n/r, n], W_2: [n, n/r] (r: the
reduction ratio, n/r rounded down, at least 1); v_f = a_f e_f. The excitation is SE-Net's sigmoid (Hu et al.),
not the ReLU of the paper's experiments: a ReLU that is 0 for a field on every sample switches that field off
in V and no gradient ever reaches its weights again (it happened at initialisation on a 6-field test model).
Bilinear interaction (section 3.4), for every pair i < j, p_ij = (v_i W) * v_j with W [D, D]:
  field_all          one W shared by all pairs
  field_each         W_i per field i (fields 0 .. n-2; the last field is never the left one of a pair)
  field_interaction  W_ij per pair
E and V have bilinear layers of their own, as in the paper's figure and DeepCTR. Neither has biases.
logit = linear part + deep_mlp([p(E), p(V)] flattened), a 1-unit logit layer appended.
Config mapping (training.config.ModelConfig): senet_reduction (r), bilinear_type, deep_mlp, bottom_mlp (dense
field tower, ends with D); top_mlp, cross_* are unused.
"""

import torch
import torch.nn.functional as F
from torch import nn

from models.fields import FirstOrder, dense_field_tower, stack_fields
from models.mlp import MLP
from models.network import Network

BILINEAR_TYPES = ("field_all", "field_each", "field_interaction")


class SENet(nn.Module):
    """Squeeze-excitation field weights: fields [B, n, D] -> the same fields scaled by a [B, n]."""

    def __init__(self, num_fields: int, reduction: int):
        super().__init__()
        if reduction < 1:
            raise ValueError(f"model.senet_reduction must be at least 1, got {reduction}")
        reduced = max(1, num_fields // reduction)
        self.squeeze = nn.Linear(num_fields, reduced, bias=False)
        self.excite = nn.Linear(reduced, num_fields, bias=False)

    def forward(self, fields: torch.Tensor) -> torch.Tensor:
        weights = torch.sigmoid(self.excite(F.relu(self.squeeze(fields.mean(dim=2)))))
        return fields * weights.unsqueeze(2)


class BilinearInteraction(nn.Module):
    """(v_i W) * v_j for every pair i < j (row-major, as torch.triu_indices): fields [B, n, D] -> [B, P, D].

    field_interaction keeps, per left field i, one Linear(D -> D (n-1-i)) that holds W_ij for every j > i."""

    def __init__(self, num_fields: int, dim: int, kind: str):
        super().__init__()
        if kind not in BILINEAR_TYPES:
            raise ValueError(f"model.bilinear_type is {kind!r}; expected one of {BILINEAR_TYPES}")
        self.kind, self.dim = kind, dim
        rows, cols = torch.triu_indices(num_fields, num_fields, offset=1)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)
        self.num_pairs = rows.numel()
        lefts = range(num_fields - 1)
        if kind == "field_all":
            self.weights = nn.ModuleList([nn.Linear(dim, dim, bias=False)])
        elif kind == "field_each":
            self.weights = nn.ModuleList(nn.Linear(dim, dim, bias=False) for _ in lefts)
        else:
            self.weights = nn.ModuleList(
                nn.Linear(dim, dim * (num_fields - 1 - i), bias=False) for i in lefts
            )

    def forward(self, fields: torch.Tensor) -> torch.Tensor:
        if self.kind == "field_all":
            left = self.weights[0](fields)[:, self.rows]
        else:
            n = fields.shape[1]
            parts = []
            for i, w in enumerate(self.weights):
                projected = w(fields[:, i])  # [B, D] or [B, D (n-1-i)]
                if self.kind == "field_each":
                    parts.append(projected.unsqueeze(1).expand(-1, n - 1 - i, -1))
                else:
                    parts.append(projected.unflatten(1, (n - 1 - i, self.dim)))
            left = torch.cat(parts, dim=1)
        return left * fields[:, self.cols]


class FiBiNET(Network):
    """Dense part of FiBiNET. Input: dense [B, Dd] and pooled embeddings [B, F, D]; output logits [B]."""

    def __init__(
        self,
        num_dense: int,
        num_features: int,
        dim: int,
        bottom_mlp: list[int],
        senet_reduction: int,
        bilinear_type: str,
        deep_mlp: list[int],
    ):
        super().__init__()
        num_fields = num_features + 1
        self.bottom = dense_field_tower(num_dense, dim, bottom_mlp)
        self.first_order = FirstOrder(num_dense, num_features, dim)
        self.senet = SENet(num_fields, senet_reduction)
        self.bilinear = BilinearInteraction(num_fields, dim, bilinear_type)
        self.senet_bilinear = BilinearInteraction(num_fields, dim, bilinear_type)
        self.deep = MLP(2 * self.bilinear.num_pairs * dim, [*deep_mlp, 1], last_activation=False)

    def logits(self, dense: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        fields = stack_fields(self.bottom, dense, pooled)
        pairs = torch.cat(
            [self.bilinear(fields), self.senet_bilinear(self.senet(fields))], dim=1
        ).flatten(1)
        return (self.first_order(dense, pooled) + self.deep(pairs)).squeeze(1)
