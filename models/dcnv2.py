"""DCN-v2 (Wang et al. 2021): a cross network over [bottom_mlp(dense), embeddings], with a deep MLP
either after it (stacked) or beside it (parallel).

Config mapping (training.config.ModelConfig):
  bottom_mlp      dense tower; its output joins the embeddings in x0 (any width; [] feeds raw dense)
  cross_layers    number of cross layers L
  cross_low_rank  r of W = U V^T; 0 = full-rank W
  dcn_structure   "stacked":  logit = top_mlp(cross(x0))                 (deep_mlp unused)
                  "parallel": logit = top_mlp([cross(x0), deep_mlp(x0)])  (top_mlp = [] is the paper's
                              single logit layer over the concatenation)
  top_mlp         hidden sizes of the head; a 1-unit logit layer is appended

MLPerf DLRM-DCNv2 (Criteo 1TB) is: name="dcnv2", bottom_mlp=[512, 256, 128], embedding.dim=128 with
26 tables, cross_layers=3, cross_low_rank=512, dcn_structure="stacked", top_mlp=[1024, 1024, 512, 256]
-> x0 width 128 + 26 * 128 = 3456, head 3456-1024-1024-512-256-1.
"""

import torch
from torch import nn

from models.interactions import CrossNetwork
from models.mlp import MLP
from models.network import Network

DCN_STRUCTURES = ("stacked", "parallel")


class DCNv2(Network):
    """Dense part of DCN-v2. Input: dense [B, Dd] and pooled embeddings [B, F, D]; output logits [B]."""

    def __init__(
        self,
        num_dense: int,
        num_features: int,
        dim: int,
        bottom_mlp: list[int],
        top_mlp: list[int],
        cross_layers: int,
        cross_low_rank: int = 0,
        structure: str = "stacked",
        deep_mlp: list[int] | None = None,
    ):
        super().__init__()
        if structure not in DCN_STRUCTURES:
            raise ValueError(
                f"model.dcn_structure is {structure!r}; expected one of {DCN_STRUCTURES}"
            )
        self.structure = structure
        self.bottom = MLP(num_dense, bottom_mlp)
        # without a bottom MLP the dense features join x0 as they are
        self.casts_dense_first = bool(bottom_mlp)
        x0_width = self.bottom.out_features + num_features * dim
        self.cross = self._cross_network(x0_width, cross_layers, cross_low_rank)
        head_in = x0_width
        self.deep: MLP | None = None
        if structure == "parallel":
            if not deep_mlp:
                raise ValueError(
                    "model.dcn_structure = 'parallel' needs a non-empty model.deep_mlp (the deep tower)"
                )
            self.deep = MLP(x0_width, deep_mlp)
            head_in += self.deep.out_features
        self.top = MLP(head_in, [*top_mlp, 1], last_activation=False)

    def _cross_network(self, width: int, layers: int, low_rank: int) -> nn.Module:
        return CrossNetwork(width, layers, low_rank)

    def logits(self, dense: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        bottom = self.bottom(dense)
        x0 = torch.cat([bottom, pooled.to(bottom.dtype).flatten(1)], dim=1)
        head_in = self.cross(x0)
        if self.deep is not None:
            head_in = torch.cat([head_in, self.deep(x0)], dim=1)
        return self.top(head_in).squeeze(1)
