"""AutoInt (Song et al. 2019): stacked multi-head self-attention over the n = F + 1 fields (models/fields.py:
the dense features through bottom_mlp are field 0), with residual connections.

Interacting layer over e [n, d_in], heads h = 1..H of dim d' (the paper's eq. 5-8):
  Q_h, K_h, V_h = e W_h^Q, e W_h^K, e W_h^V              (no biases)
  e~_h = softmax(Q_h K_h^T / sqrt(d')) V_h                (torch's scaled_dot_product_attention; the paper scores
                                                          by the plain inner product, the 1/sqrt(d') scaling is
                                                          the Transformer's and keeps the softmax unsaturated)
  out = ReLU([e~_1, .., e~_H] + e W^Res)                   [n, H d']
logit = w^T [flatten(out of the last layer), deep_mlp(flatten(fields))] + b: with deep_mlp = [] the paper's
AutoInt, with a deep tower AutoInt+ (the paper's variant; DeepCTR's AutoInt concatenates the same way).
Config mapping (training.config.ModelConfig): attention_layers, attention_heads (H), attention_dim (d' per head),
deep_mlp, bottom_mlp (dense field tower, ends with D); top_mlp, cross_* are unused.
"""

import torch
import torch.nn.functional as F
from torch import nn

from models.fields import dense_field_tower, stack_fields
from models.mlp import MLP
from models.network import Network


class InteractingLayer(nn.Module):
    """One multi-head self-attention layer with a residual, fields [B, n, d_in] -> [B, n, H d']."""

    def __init__(self, in_dim: int, heads: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.qkv = nn.Linear(in_dim, 3 * heads * head_dim, bias=False)
        self.residual = nn.Linear(in_dim, heads * head_dim, bias=False)
        self.out_dim = heads * head_dim

    def forward(self, fields: torch.Tensor) -> torch.Tensor:
        batch, n, _ = fields.shape
        qkv = self.qkv(fields).view(batch, n, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [B, H, n, d']
        attended = F.scaled_dot_product_attention(q, k, v)  # [B, H, n, d']
        attended = attended.transpose(1, 2).reshape(batch, n, self.out_dim)
        return F.relu(attended + self.residual(fields))


class AutoInt(Network):
    """Dense part of AutoInt(+). Input: dense [B, Dd] and pooled embeddings [B, F, D]; output logits [B]."""

    def __init__(
        self,
        num_dense: int,
        num_features: int,
        dim: int,
        bottom_mlp: list[int],
        attention_layers: int,
        attention_heads: int,
        attention_dim: int,
        deep_mlp: list[int],
    ):
        super().__init__()
        for key, value in (
            ("attention_layers", attention_layers),
            ("attention_heads", attention_heads),
            ("attention_dim", attention_dim),
        ):
            if value < 1:
                raise ValueError(f"model.{key} must be at least 1, got {value}")
        self.bottom = dense_field_tower(num_dense, dim, bottom_mlp)
        self.attention = nn.ModuleList()
        in_dim = dim
        for _ in range(attention_layers):
            self.attention.append(InteractingLayer(in_dim, attention_heads, attention_dim))
            in_dim = attention_heads * attention_dim
        num_fields = num_features + 1
        self.deep = MLP(num_fields * dim, deep_mlp) if deep_mlp else None
        deep_out = self.deep.out_features if self.deep is not None else 0
        self.head = nn.Linear(num_fields * in_dim + deep_out, 1)

    def logits(self, dense: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        fields = stack_fields(self.bottom, dense, pooled)
        x = fields
        for layer in self.attention:
            x = layer(x)
        head_in = x.flatten(1)
        if self.deep is not None:
            head_in = torch.cat([head_in, self.deep(fields.flatten(1))], dim=1)
        return self.head(head_in).squeeze(1)
