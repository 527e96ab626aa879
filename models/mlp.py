"""Multi-layer perceptron used by every model's towers."""

import torch
from torch import nn


class MLP(nn.Sequential):
    """Linear layers with ReLU between them; ``last_activation`` keeps the ReLU on the output."""

    def __init__(self, in_features: int, sizes: list[int], last_activation: bool = True):
        layers: list[nn.Module] = []
        for i, size in enumerate(sizes):
            layers.append(nn.Linear(in_features, size))
            if i < len(sizes) - 1 or last_activation:
                layers.append(nn.ReLU())
            in_features = size
        super().__init__(*layers)
        self.out_features = in_features

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        for layer in self:
            if isinstance(layer, nn.Linear):
                bound = (6.0 / (layer.in_features + layer.out_features)) ** 0.5  # Xavier-uniform, like DLRM
                with torch.no_grad():
                    layer.weight.uniform_(-bound, bound, generator=generator)
                    layer.bias.zero_()
