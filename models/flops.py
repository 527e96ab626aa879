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

from dataclasses import dataclass, replace

from models.projection import network_shape, projection_flops


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


def dcnmix_flops(
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
) -> DenseFlops:
    """models.dcnmix.DCNMix: per layer V (d -> Kr), K C_i (r -> r), U (Kr -> d), the gate (d -> K, K > 1)
    as matmuls; the gate weighting (Kr) and x0 * h + x_l (2d) elementwise (ReLU and softmax not counted)."""
    bottom, bottom_out = mlp_flops(num_dense, bottom_mlp)
    d, r, k = bottom_out + num_features * dim, cross_low_rank, cross_experts
    gate = 2.0 * d * k if k > 1 else 0.0
    per_layer = 2.0 * d * k * r + k * 2.0 * r * r + 2.0 * k * r * d + gate
    elementwise = cross_layers * ((k * r if k > 1 else 0.0) + 2.0 * d)
    deep, head_in = 0.0, d
    if structure == "parallel":
        deep, deep_out = mlp_flops(d, list(deep_mlp or []))
        head_in += deep_out
    top, _ = mlp_flops(head_in, [*top_mlp, 1])
    return DenseFlops(
        matmul=bottom + cross_layers * per_layer + deep + top,
        elementwise=elementwise,
        raw_input_matmul=_first_layer_flops(num_dense, bottom_mlp),
    )


def _field_model(num_dense: int, num_features: int, dim: int, bottom_mlp: list[int]):
    """(bottom + first-order matmul FLOPs, raw-input part) of models.fields' tower and linear part."""
    bottom, _ = mlp_flops(num_dense, bottom_mlp)
    first_order = 2.0 * num_dense + 2.0 * num_features * dim
    return bottom + first_order, 2.0 * num_dense + _first_layer_flops(num_dense, bottom_mlp)


def xdeepfm_flops(
    num_dense: int,
    num_features: int,
    dim: int,
    bottom_mlp: list[int],
    cin_layers: list[int],
    deep_mlp: list[int],
) -> DenseFlops:
    """models.xdeepfm.XDeepFM: CIN layer k is a Linear(H_{k-1} n -> H_k) at each of the D positions, after
    H_{k-1} n D products, and H_k D adds of its sum pooling (elementwise)."""
    n = num_features + 1
    base, raw = _field_model(num_dense, num_features, dim, bottom_mlp)
    cin, elementwise, previous = 0.0, 0.0, n
    for size in cin_layers:
        cin += 2.0 * previous * n * size * dim
        elementwise += previous * n * dim + size * dim
        previous = size
    deep, _ = mlp_flops(n * dim, [*deep_mlp, 1])
    return DenseFlops(
        matmul=base + cin + 2.0 * sum(cin_layers) + deep,
        elementwise=elementwise,
        raw_input_matmul=raw,
    )


def autoint_flops(
    num_dense: int,
    num_features: int,
    dim: int,
    bottom_mlp: list[int],
    attention_layers: int,
    attention_heads: int,
    attention_dim: int,
    deep_mlp: list[int],
) -> DenseFlops:
    """models.autoint.AutoInt: per layer, Q, K, V and the residual projections (4 Linear(d_in -> H d') per
    field), Q K^T and the weighted sum of V (2 n^2 d' per head each) as matmuls; the residual add (n H d')
    elementwise (softmax, scaling, ReLU not counted)."""
    n, width = num_features + 1, attention_heads * attention_dim
    bottom, _ = mlp_flops(num_dense, bottom_mlp)
    matmul, in_dim = bottom, dim
    for _ in range(attention_layers):
        matmul += 4 * 2.0 * n * in_dim * width + 2 * 2.0 * attention_heads * n * n * attention_dim
        in_dim = width
    deep, deep_out = mlp_flops(n * dim, deep_mlp) if deep_mlp else (0.0, 0)
    return DenseFlops(
        matmul=matmul + deep + 2.0 * (n * in_dim + deep_out),
        elementwise=attention_layers * float(n * width),
        raw_input_matmul=_first_layer_flops(num_dense, bottom_mlp),
    )


def fibinet_flops(
    num_dense: int,
    num_features: int,
    dim: int,
    bottom_mlp: list[int],
    senet_reduction: int,
    bilinear_type: str,
    deep_mlp: list[int],
) -> DenseFlops:
    """models.fibinet.FiBiNET: SENET's two Linears, the bilinear projections (field_all projects all n fields,
    field_each the n-1 left ones, field_interaction every pair) on E and V, the DNN; elementwise the SENET
    mean (n D) and scaling (n D) and the P D Hadamard products of each bilinear layer (sigmoid not counted)."""
    n = num_features + 1
    pairs = n * (n - 1) // 2
    base, raw = _field_model(num_dense, num_features, dim, bottom_mlp)
    senet = 2 * 2.0 * n * max(1, n // senet_reduction)
    projected = {"field_all": n, "field_each": n - 1, "field_interaction": pairs}[bilinear_type]
    bilinear = 2 * 2.0 * projected * dim * dim
    deep, _ = mlp_flops(2 * pairs * dim, [*deep_mlp, 1])
    return DenseFlops(
        matmul=base + senet + bilinear + deep,
        elementwise=2.0 * n * dim + 2.0 * pairs * dim,
        raw_input_matmul=raw,
    )


def wide_deep_flops(
    num_dense: int, num_features: int, dim: int, bottom_mlp: list[int], deep_mlp: list[int]
) -> DenseFlops:
    """models.wide_deep.WideDeep: the wide Linear over [dense, embeddings] (its input gradient is needed for
    the embeddings, so it is not a raw-input layer), the bottom tower and the deep MLP."""
    bottom, bottom_out = mlp_flops(num_dense, bottom_mlp)
    deep, _ = mlp_flops(bottom_out + num_features * dim, [*deep_mlp, 1])
    wide = 2.0 * (num_dense + num_features * dim)
    return DenseFlops(
        matmul=wide + bottom + deep,
        elementwise=0.0,
        raw_input_matmul=_first_layer_flops(num_dense, bottom_mlp),
    )


# model.name -> its FLOPs from (cfg, num_dense, num_features, dim)
FORMULAS = {
    "dlrm": lambda c, *s: dlrm_flops(*s, c.bottom_mlp, c.top_mlp),
    "dcnv2": lambda c, *s: dcnv2_flops(
        *s, c.bottom_mlp, c.top_mlp, c.cross_layers, c.cross_low_rank, c.dcn_structure, c.deep_mlp
    ),
    "deepfm": lambda c, *s: deepfm_flops(*s, c.bottom_mlp, c.deep_mlp),
    "dcnmix": lambda c, *s: dcnmix_flops(
        *s,
        c.bottom_mlp,
        c.top_mlp,
        c.cross_layers,
        c.cross_low_rank,
        c.cross_experts,
        c.dcn_structure,
        c.deep_mlp,
    ),
    "xdeepfm": lambda c, *s: xdeepfm_flops(*s, c.bottom_mlp, c.cin_layers, c.deep_mlp),
    "autoint": lambda c, *s: autoint_flops(
        *s, c.bottom_mlp, c.attention_layers, c.attention_heads, c.attention_dim, c.deep_mlp
    ),
    "fibinet": lambda c, *s: fibinet_flops(
        *s, c.bottom_mlp, c.senet_reduction, c.bilinear_type, c.deep_mlp
    ),
    "wide_deep": lambda c, *s: wide_deep_flops(*s, c.bottom_mlp, c.deep_mlp),
}


def dense_flops_per_sample(
    cfg, num_dense: int, num_features: int, dim: int, feature_dims: list[int] | None = None
) -> DenseFlops:
    """FLOPs of the dense network that models.build_model(cfg, ...) builds (cfg: training.config.ModelConfig),
    with the per-table projections of models.projection where feature_dims differ from dim."""
    if cfg.name not in FORMULAS:
        raise ValueError(
            f"model.name {cfg.name!r} has no FLOP formula (expected one of {', '.join(FORMULAS)})"
        )
    features, width, project = network_shape(cfg.name, num_features, dim, feature_dims)
    flops = FORMULAS[cfg.name](cfg, num_dense, features, width)
    if not project:
        return flops
    return replace(flops, matmul=flops.matmul + projection_flops(feature_dims, dim))
