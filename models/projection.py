"""Per-table embedding dims for the dense networks: the pooled input of a collection whose tables differ in dim
(embedding.mixed: [B, sum of the features' dims]) as the networks take it.

Networks that only concatenate the embeddings (CONCAT_MODELS) take that concatenation directly: they are built
with one "feature" as wide as all of them, so their first layers follow the real widths. The others need every
field at one dim (DLRM's dot products, the FM term, the field models' interactions): a FieldProjection maps each
table whose dim differs from embedding.dim through its own Linear(d, D, bias=False), shared by the table's
features, as facebookresearch/dlrm's mixed-dimension embeddings do. Being nn.Linear, the projections live in the
network's flat parameter buffer (models.network) and train with the dense optimizer.
"""

from __future__ import annotations

import torch
from torch import nn

# model.name values whose networks read the embeddings only as one flat concatenation
CONCAT_MODELS = ("dcnv2", "dcnmix", "wide_deep")


class FieldProjection(nn.Module):
    """pooled [B, sum of feature_dims] (or [B, F, d]) -> fields [B, F, dim], in feature order."""

    def __init__(self, feature_dims: list[int], feature_tables: list[str], dim: int):
        super().__init__()
        self.feature_dims = list(feature_dims)
        tables = list(
            dict.fromkeys(t for t, d in zip(feature_tables, feature_dims, strict=True) if d != dim)
        )
        table_dim = dict(zip(feature_tables, feature_dims, strict=True))
        self.linears = nn.ModuleList(nn.Linear(table_dim[t], dim, bias=False) for t in tables)
        index = {t: i for i, t in enumerate(tables)}
        # each feature's Linear in self.linears, -1: already of dim D
        self.which = [
            index.get(t, -1) if d != dim else -1
            for t, d in zip(feature_tables, feature_dims, strict=True)
        ]

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        columns = pooled.flatten(1).split(self.feature_dims, dim=1)
        fields = [
            x if i < 0 else self.linears[i](x) for x, i in zip(columns, self.which, strict=True)
        ]
        dtype = next(
            (f.dtype for f, i in zip(fields, self.which, strict=True) if i >= 0), fields[0].dtype
        )
        return torch.stack([f.to(dtype) for f in fields], dim=1)


def projection_flops(feature_dims: list[int], dim: int) -> float:
    """Forward FLOPs per sample of FieldProjection(feature_dims, ..., dim): one d x D matmul per projected
    feature."""
    return float(sum(2.0 * d * dim for d in feature_dims if d != dim))


def network_shape(
    name: str, num_features: int, dim: int, feature_dims: list[int] | None
) -> tuple[int, int, bool]:
    """(num_features, dim) to build network `name` with, and whether it needs a FieldProjection."""
    if not feature_dims or all(d == dim for d in feature_dims):
        return num_features, dim, False
    if name in CONCAT_MODELS:
        return 1, sum(feature_dims), False
    return num_features, dim, True
