"""Multi-layer perceptron used by every model's towers."""

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
