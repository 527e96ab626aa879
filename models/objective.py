"""What a training step's forward computes: the dense network's logits and the mean binary cross-entropy.

One module, so that torch.compile (model.compile) takes the loss into the network's graph: its forward is one
reduction fused after the last layer and its backward one pointwise kernel, where eager BCE-with-logits launches
five kernels forward and six backward. Evaluation calls the network alone (logits).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Objective(nn.Module):
    """loss = mean BCE(network(dense, pooled), labels), or with per-sample weights w the mean of w * BCE.
    network: the dense network, or DDP around it; this module holds no parameters of its own and is never
    saved (checkpoints save the network).

    Weights as a dataset stores them make mean(w * BCE) a weighted sum over the batch size; the train
    loader scales them by B / (the global batch's weight sum) (training.data.normalize_weights), so the
    loss is sum(w * BCE) / sum(w) over the batch at W = 1, and DDP's mean of the ranks' losses is the same
    weighted mean of the global batch at any W."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(
        self,
        dense: torch.Tensor,
        pooled: torch.Tensor,
        labels: torch.Tensor,
        weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        logits = self.network(dense, pooled).float()
        if weights is None:
            return F.binary_cross_entropy_with_logits(logits, labels)
        return F.binary_cross_entropy_with_logits(logits, labels, weight=weights.float())

    def bare(self) -> Objective:
        """The same objective around the network without DDP (what launch prediction compiles)."""
        return Objective(getattr(self.network, "module", self.network))
