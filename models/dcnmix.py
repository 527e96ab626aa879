"""DCNMix: DCN-v2's cross network as a mixture of low-rank experts (Wang et al. 2021, section 5.2), with the
bottom tower, structure and head of models/dcnv2.py.

Layer l, experts i = 1..K of rank r, x0 the cross input, g = ReLU (torchrec's LowRankMixtureCrossNet):
  E_i(x_l) = x0 * (U_i g(C_i g(V_i^T x_l)) + b_l)          U_i: [d, r], C_i: [r, r], V_i: [d, r]
  G(x_l)   = softmax(W_g x_l) over the K experts           (no gate when K = 1)
  x_{l+1}  = sum_i G_i(x_l) E_i(x_l) + x_l

Since the gates sum to 1, sum_i G_i x0 * (U_i h_i + b) = x0 * ([U_1 .. U_K] [G_1 h_1; ..; G_K h_K] + b): one
Linear(K r -> d) with the bias b, after one Linear(d -> K r) holding every V_i^T. The layer then has the shape of
a CrossNetwork layer, x0 * layer(x_l) + x_l, and the network is a CrossNetwork (so model.init = "dlrm" zeroes its
biases as it does DCN-v2's: models/init.py).

Config mapping (training.config.ModelConfig): cross_layers (L), cross_low_rank (r, >= 1), cross_experts (K),
dcn_structure, bottom_mlp, deep_mlp, top_mlp as for dcnv2.
"""

import torch
import torch.nn.functional as F
from torch import nn

from models.dcnv2 import DCNv2
from models.interactions import CrossNetwork


class MixtureLowRankLayer(nn.Module):
    """sum_i G_i(x) (U_i g(C_i g(V_i^T x))) + b for x [B, d]; output [B, d]."""

    def __init__(self, width: int, low_rank: int, num_experts: int):
        super().__init__()
        self.low_rank, self.num_experts = low_rank, num_experts
        self.down = nn.Linear(width, num_experts * low_rank, bias=False)  # every V_i^T
        self.mix = nn.ModuleList(
            nn.Linear(low_rank, low_rank, bias=False) for _ in range(num_experts)
        )  # C_i
        self.up = nn.Linear(num_experts * low_rank, width)  # [U_1 .. U_K] and b
        self.gate = nn.Linear(width, num_experts, bias=False) if num_experts > 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = F.relu(self.down(x)).unflatten(1, (self.num_experts, self.low_rank))  # [B, K, r]
        low = torch.stack([F.relu(c(low[:, i])) for i, c in enumerate(self.mix)], dim=1)
        if self.gate is not None:
            low = low * F.softmax(self.gate(x), dim=1).unsqueeze(2)
        return self.up(low.flatten(1))


class MixtureCrossNetwork(CrossNetwork):
    """L mixture cross layers over x0 [B, d]: x_{l+1} = x0 * layer_l(x_l) + x_l (CrossNetwork.forward)."""

    def __init__(self, width: int, num_layers: int, low_rank: int, num_experts: int):
        nn.Module.__init__(self)
        if num_layers < 1:
            raise ValueError(f"model.cross_layers must be at least 1, got {num_layers}")
        if low_rank < 1:
            raise ValueError(
                f"model.cross_low_rank is {low_rank}; model.name 'dcnmix' needs each expert's rank >= 1"
            )
        if num_experts < 1:
            raise ValueError(f"model.cross_experts must be at least 1, got {num_experts}")
        self.width, self.low_rank, self.num_experts = width, low_rank, num_experts
        self.layers = nn.ModuleList(
            MixtureLowRankLayer(width, low_rank, num_experts) for _ in range(num_layers)
        )


class DCNMix(DCNv2):
    """Dense part of DCNMix. Input: dense [B, Dd] and pooled embeddings [B, F, D]; output logits [B]. DCN-v2's
    towers, structure and head around a MixtureCrossNetwork."""

    def __init__(
        self,
        num_dense: int,
        num_features: int,
        dim: int,
        bottom_mlp: list[int],
        top_mlp: list[int],
        cross_layers: int,
        cross_low_rank: int,
        cross_experts: int,
        structure: str = "stacked",
        deep_mlp: list[int] | None = None,
    ):
        self.num_experts = cross_experts  # read by _cross_network, which DCNv2.__init__ calls
        super().__init__(
            num_dense, num_features, dim, bottom_mlp, top_mlp, cross_layers, cross_low_rank,
            structure, deep_mlp,
        )  # fmt: skip

    def _cross_network(self, width: int, layers: int, low_rank: int) -> nn.Module:
        return MixtureCrossNetwork(width, layers, low_rank, self.num_experts)
