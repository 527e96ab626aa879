"""Analytic dense FLOPs per sample, for MFU (training.peak.mfu, the metrics line's mfu_pct).

Conventions:
- A multiply-add is 2 FLOPs. A Linear(i -> o) costs 2*i*o per sample; its bias add is not counted
  (the same convention as torch.utils.flop_counter, so tests can check these numbers against it).
- The dot interaction's bmm computes the full (F+1)x(F+1) Gram matrix, so that is what is counted,
  although only the upper triangle is used.
- Interactions whose math is elementwise (the cross layer's x0 * h + x_l, the FM term) are counted
  one FLOP per elementwise op in ``elementwise``; they are small next to the matmuls, and counting
  them keeps a model with a small deep part honest.
- ReLU, concatenation and the sum of DeepFM's three logit terms are not counted.
- Training = 3 x forward, less what backward never computes: backward runs two matmuls (input and
  weight gradients) per forward one, except for layers fed the raw dense features, whose input
  gradient nobody needs (``raw_input_matmul``). On a tiny model that first layer is a few percent;
  on MLPerf DCN-v2 it is 0.04%.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class DenseFlops:
    """Forward FLOPs for one sample, split by kind."""

    matmul: float  # Linear layers, the dot interaction's bmm, cross layer matmuls
    elementwise: float  # cross layers' x0 * h + x_l, the FM second-order term
    # part of ``matmul`` in layers whose input is the raw dense features
    raw_input_matmul: float = 0.0

    @property
    def forward(self) -> float:
        return self.matmul + self.elementwise

    @property
    def training(self) -> float:
        """Forward + backward FLOPs per sample: 3 x forward, less the skipped raw-input gradients."""
        return 3.0 * self.forward - self.raw_input_matmul


def mlp_flops(in_features: int, sizes: list[int]) -> tuple[float, int]:
    """Forward FLOPs of models.mlp.MLP(in_features, sizes) per sample, and its output width."""
    flops = 0.0
    for size in sizes:
        flops += 2.0 * in_features * size
        in_features = size
    return flops, in_features


def _first_layer_flops(num_dense: int, sizes: list[int]) -> float:
    return 2.0 * num_dense * sizes[0] if sizes else 0.0


def dlrm_flops(
    num_dense: int, num_features: int, dim: int, bottom_mlp: list[int], top_mlp: list[int]
) -> DenseFlops:
    bottom, _ = mlp_flops(num_dense, bottom_mlp)
    n = num_features + 1  # the dense vector joins the embeddings
    gram = 2.0 * n * n * dim
    top, _ = mlp_flops(dim + n * (n - 1) // 2, [*top_mlp, 1])
    return DenseFlops(
        matmul=bottom + gram + top,
        elementwise=0.0,
        raw_input_matmul=_first_layer_flops(num_dense, bottom_mlp),
    )


def cross_flops(width: int, num_layers: int, low_rank: int) -> DenseFlops:
    """models.interactions.CrossNetwork: W x (full, d^2) or U (V^T x) (low rank, 2dr) per layer, plus
    x0 * h + x_l (2d elementwise)."""
    per_layer = (
        2.0 * width * width if low_rank == 0 else 2.0 * (width * low_rank + low_rank * width)
    )
    return DenseFlops(matmul=num_layers * per_layer, elementwise=num_layers * 2.0 * width)


def dcnv2_flops(
    num_dense: int,
    num_features: int,
    dim: int,
    bottom_mlp: list[int],
    top_mlp: list[int],
    cross_layers: int,
    cross_low_rank: int = 0,
    structure: str = "stacked",
    deep_mlp: list[int] | None = None,
) -> DenseFlops:
    bottom, bottom_out = mlp_flops(num_dense, bottom_mlp)
    x0_width = bottom_out + num_features * dim
    cross = cross_flops(x0_width, cross_layers, cross_low_rank)
    deep, head_in = 0.0, x0_width
    if structure == "parallel":
        deep, deep_out = mlp_flops(x0_width, list(deep_mlp or []))
        head_in += deep_out
    top, _ = mlp_flops(head_in, [*top_mlp, 1])
    return DenseFlops(
        matmul=bottom + cross.matmul + deep + top,
        elementwise=cross.elementwise,
        raw_input_matmul=_first_layer_flops(num_dense, bottom_mlp),
    )


def fm_flops(num_fields: int, dim: int) -> float:
    """0.5 * sum_d((sum_i v)^2 - sum_i v^2): (n-1)D + D for the squared sum, nD + (n-1)D for the sum
    of squares, D for the difference, D for the sum over d (rounded up from D-1, plus the 0.5)."""
    n = num_fields
    return float((n - 1) * dim + dim + n * dim + (n - 1) * dim + dim + dim)


def deepfm_flops(
    num_dense: int, num_features: int, dim: int, bottom_mlp: list[int], deep_mlp: list[int]
) -> DenseFlops:
    first_order = 2.0 * num_dense + 2.0 * num_features * dim
    bottom, _ = mlp_flops(num_dense, bottom_mlp)
    deep, _ = mlp_flops((num_features + 1) * dim, [*deep_mlp, 1])
    return DenseFlops(
        matmul=first_order + bottom + deep,
        elementwise=fm_flops(num_features + 1, dim),
        # dense first order + bottom
        raw_input_matmul=2.0 * num_dense + _first_layer_flops(num_dense, bottom_mlp),
    )


def dense_flops_per_sample(cfg, num_dense: int, num_features: int, dim: int) -> DenseFlops:
    """FLOPs of the dense network that models.build_model(cfg, ...) builds (cfg: training.config.ModelConfig)."""
    if cfg.name == "dlrm":
        return dlrm_flops(num_dense, num_features, dim, cfg.bottom_mlp, cfg.top_mlp)
    if cfg.name == "dcnv2":
        return dcnv2_flops(
            num_dense,
            num_features,
            dim,
            cfg.bottom_mlp,
            cfg.top_mlp,
            cfg.cross_layers,
            cfg.cross_low_rank,
            cfg.dcn_structure,
            cfg.deep_mlp,
        )
    if cfg.name == "deepfm":
        return deepfm_flops(num_dense, num_features, dim, cfg.bottom_mlp, cfg.deep_mlp)
    raise ValueError(
        f"model.name {cfg.name!r} has no FLOP formula (expected dlrm, dcnv2 or deepfm)"
    )
