"""xDeepFM (Lian et al. 2018): logit = linear part + CIN + DNN, all over the same n = F + 1 fields
(models/fields.py: the dense features through bottom_mlp are field 0).

Compressed interaction network (the paper's eq. 6, no activation, every layer's maps pooled): with X^0 the
fields [n, D] and X^k [H_k, D],
  X^k_h = sum_{i < H_{k-1}, j < n} W^{k,h}_{ij} (X^{k-1}_i * X^0_j)       (a Linear over the H_{k-1} n products)
  p^k_h = sum_d X^k_{h,d}                                                 (sum pooling per feature map)
  CIN logit = w^T [p^1, .., p^T]
Config mapping (training.config.ModelConfig): cin_layers = [H_1, .., H_T]; deep_mlp = the DNN's hidden sizes (a
1-unit logit layer is appended); bottom_mlp = dense field tower (ends with D); top_mlp, cross_* are unused.
"""

import torch
from torch import nn

from models.fields import FirstOrder, dense_field_tower, stack_fields
from models.mlp import MLP
from models.network import Network


class CompressedInteraction(nn.Module):
    """CIN over fields [B, n, D]: the sum-pooled feature maps of every layer, [B, H_1 + .. + H_T]."""

    def __init__(self, num_fields: int, layer_sizes: list[int]):
        super().__init__()
        if not layer_sizes:
            raise ValueError(
                "model.cin_layers is []; model.name 'xdeepfm' needs at least one CIN layer"
            )
        self.layers = nn.ModuleList()
        previous = num_fields
        for size in layer_sizes:
            self.layers.append(nn.Linear(previous * num_fields, size, bias=False))
            previous = size
        self.out_features = sum(layer_sizes)

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x, pooled = x0, []
        for layer in self.layers:
            products = (x.unsqueeze(2) * x0.unsqueeze(1)).flatten(1, 2)  # [B, H_{k-1} n, D]
            x = layer(products.transpose(1, 2)).transpose(1, 2)  # [B, H_k, D]
            pooled.append(x.sum(dim=2))
        return torch.cat(pooled, dim=1)


class XDeepFM(Network):
    """Dense part of xDeepFM. Input: dense [B, Dd] and pooled embeddings [B, F, D]; output logits [B]."""

    def __init__(
        self,
        num_dense: int,
        num_features: int,
        dim: int,
        bottom_mlp: list[int],
        cin_layers: list[int],
        deep_mlp: list[int],
    ):
        super().__init__()
        self.bottom = dense_field_tower(num_dense, dim, bottom_mlp)
        self.first_order = FirstOrder(num_dense, num_features, dim)
        self.cin = CompressedInteraction(num_features + 1, cin_layers)
        self.cin_logit = nn.Linear(self.cin.out_features, 1, bias=False)
        self.deep = MLP((num_features + 1) * dim, [*deep_mlp, 1], last_activation=False)

    def logits(self, dense: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        fields = stack_fields(self.bottom, dense, pooled)
        logit = (
            self.first_order(dense, pooled)
            + self.cin_logit(self.cin(fields))
            + self.deep(fields.flatten(1))
        )
        return logit.squeeze(1)
