"""Feature interactions between the dense tower output and the pooled embeddings."""

import torch
from torch import nn


class DotInteraction(nn.Module):
    """DLRM's pairwise dot products of [dense, emb_1, ..., emb_F] (upper triangle, no diagonal),
    concatenated after the dense vector: [B, D + (F+1)F/2]."""

    def __init__(self, num_features: int):
        super().__init__()
        n = num_features + 1
        rows, cols = torch.triu_indices(n, n, offset=1)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)
        self.num_pairs = rows.numel()

    def forward(self, dense: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        stacked = torch.cat([dense.unsqueeze(1), pooled], dim=1)  # [B, F+1, D]
        gram = torch.bmm(stacked, stacked.transpose(1, 2))  # [B, F+1, F+1]
        return torch.cat([dense, gram[:, self.rows, self.cols]], dim=1)
