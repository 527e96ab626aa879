"""Dense models: shapes, gradient flow, and small cases computed by hand (numbers derived in comments)."""

import pytest
import torch
from torch import nn

from models import CrossNetwork, DCNv2, DeepFM, DotInteraction, FactorizationMachine, build_model
from tests.support.training import dense_state, load_parts
from training.config import ConfigError, ModelConfig, load_config

NUM_DENSE, NUM_FEATURES, DIM, BATCH = 13, 5, 16, 7

CONFIGS = {
    "dlrm": ModelConfig(name="dlrm", bottom_mlp=[32, 16], top_mlp=[32, 16]),
    "dcnv2-full-stacked": ModelConfig(
        name="dcnv2", bottom_mlp=[32, 16], top_mlp=[32], cross_layers=2
    ),
    "dcnv2-lowrank-stacked": ModelConfig(
        name="dcnv2", bottom_mlp=[32, 16], top_mlp=[32], cross_layers=3, cross_low_rank=8
    ),
    "dcnv2-full-parallel": ModelConfig(
        name="dcnv2",
        bottom_mlp=[32, 8],
        top_mlp=[],
        cross_layers=2,
        dcn_structure="parallel",
        deep_mlp=[32, 16],
    ),
    "dcnv2-lowrank-parallel": ModelConfig(
        name="dcnv2",
        bottom_mlp=[],
        top_mlp=[16],
        cross_layers=1,
        cross_low_rank=4,
        dcn_structure="parallel",
        deep_mlp=[32],
    ),
    "deepfm": ModelConfig(name="deepfm", bottom_mlp=[32, 16], deep_mlp=[32, 16]),
    "dcnmix-stacked": ModelConfig(
        name="dcnmix", bottom_mlp=[32, 16], top_mlp=[32], cross_layers=2, cross_low_rank=4
    ),
    "dcnmix-parallel": ModelConfig(
        name="dcnmix",
        bottom_mlp=[],
        top_mlp=[],
        cross_layers=1,
        cross_low_rank=3,
        cross_experts=2,
        dcn_structure="parallel",
        deep_mlp=[16],
    ),
    "xdeepfm": ModelConfig(name="xdeepfm", bottom_mlp=[32, 16], cin_layers=[8, 4], deep_mlp=[32]),
    "autoint": ModelConfig(
        name="autoint", bottom_mlp=[16], attention_layers=2, attention_heads=2, attention_dim=8
    ),
    "autoint-plain": ModelConfig(
        name="autoint", bottom_mlp=[16], attention_layers=1, attention_heads=3, deep_mlp=[]
    ),
    "fibinet-field_all": ModelConfig(name="fibinet", bottom_mlp=[16], bilinear_type="field_all"),
    "fibinet-field_each": ModelConfig(
        name="fibinet", bottom_mlp=[16], bilinear_type="field_each", senet_reduction=2
    ),
    "fibinet-field_interaction": ModelConfig(name="fibinet", bottom_mlp=[32, 16], deep_mlp=[32]),
    "wide_deep": ModelConfig(name="wide_deep", bottom_mlp=[8], deep_mlp=[32, 16]),
    "wide_deep-raw-dense": ModelConfig(name="wide_deep", bottom_mlp=[], deep_mlp=[16]),
}


def _inputs(batch=BATCH, num_features=NUM_FEATURES, dim=DIM):
    g = torch.Generator().manual_seed(0)
    dense = torch.randn(batch, NUM_DENSE, generator=g)
    pooled = torch.randn(batch, num_features, dim, generator=g, requires_grad=True)
    return dense, pooled


@pytest.mark.parametrize("name", list(CONFIGS))
def test_model_returns_one_logit_per_sample(name):
    torch.manual_seed(0)
    model = build_model(CONFIGS[name], NUM_DENSE, NUM_FEATURES, DIM)
    dense, pooled = _inputs()
    logits = model(dense, pooled)
    assert logits.shape == (BATCH,)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_gradients_reach_every_parameter_and_the_embeddings(name):
    torch.manual_seed(0)
    model = build_model(CONFIGS[name], NUM_DENSE, NUM_FEATURES, DIM)
    dense, pooled = _inputs()
    model(dense, pooled).square().mean().backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None, f"{param_name} got no gradient"
        assert param.grad.abs().sum() > 0, f"{param_name} got an all-zero gradient"
    assert pooled.grad is not None and pooled.grad.abs().sum() > 0


def test_build_model_dispatches_by_name():
    assert isinstance(
        build_model(CONFIGS["dcnv2-full-stacked"], NUM_DENSE, NUM_FEATURES, DIM), DCNv2
    )
    assert isinstance(build_model(CONFIGS["deepfm"], NUM_DENSE, NUM_FEATURES, DIM), DeepFM)
    with pytest.raises(ValueError, match="not available"):
        build_model(ModelConfig(name="wide_and_deep"), NUM_DENSE, NUM_FEATURES, DIM)


def test_dcn_structure_is_checked():
    with pytest.raises(ConfigError, match="dcn_structure"):
        load_config(["--model.dcn_structure", "sideways"])
    assert load_config(["--model.dcn_structure", "parallel"]).model.dcn_structure == "parallel"
    with pytest.raises(ValueError, match="deep_mlp"):
        DCNv2(
            NUM_DENSE,
            NUM_FEATURES,
            DIM,
            [16],
            [8],
            cross_layers=1,
            structure="parallel",
            deep_mlp=[],
        )


def test_dot_interaction_by_hand():
    # dense [1, 2], embeddings e1 = [3, 0], e2 = [0, 1]
    # pairs (dense, e1) = 1*3 + 2*0 = 3; (dense, e2) = 1*0 + 2*1 = 2; (e1, e2) = 0
    out = DotInteraction(num_features=2)(
        torch.tensor([[1.0, 2.0]]), torch.tensor([[[3.0, 0.0], [0.0, 1.0]]])
    )
    assert out.tolist() == [[1.0, 2.0, 3.0, 2.0, 0.0]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dot_interaction_gradients_are_those_of_indexing(dtype):
    """The pairs' backward gathers (one kernel) where indexing's scatters: the same bits."""
    interaction, g = DotInteraction(num_features=5), torch.Generator().manual_seed(0)
    dense, pooled = torch.randn(4, 3, generator=g), torch.randn(4, 5, 3, generator=g)
    seed = torch.randn(4, 3 + interaction.num_pairs, generator=g).to(dtype)

    def grads(forward):
        inputs = [dense.to(dtype).requires_grad_(), pooled.to(dtype).requires_grad_()]
        out = forward(*inputs)
        out.backward(seed)
        return [out.detach(), *(t.grad for t in inputs)]

    def by_indexing(d, p):
        stacked = torch.cat([d.unsqueeze(1), p], dim=1)
        gram = torch.bmm(stacked, stacked.transpose(1, 2))
        return torch.cat([d, gram[:, interaction.rows, interaction.cols]], dim=1)

    got, want = grads(interaction), grads(by_indexing)
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    assert got[1].abs().sum() > 0 and got[2].abs().sum() > 0


def test_fm_second_order_by_hand():
    # v1 = [1, 2, 3], v2 = [4, 5, 6]: <v1, v2> = 4 + 10 + 18 = 32
    # (formula: sum = [5, 7, 9] -> 25 + 49 + 81 = 155; squares 1+4+9+16+25+36 = 91; (155 - 91) / 2 = 32)
    two = torch.tensor([[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]])
    assert FactorizationMachine()(two).tolist() == [[32.0]]
    # add v3 = [1, 0, -1]: <v1, v3> = 1 - 3 = -2, <v2, v3> = 4 - 6 = -2 -> 32 - 4 = 28
    three = torch.tensor([[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [1.0, 0.0, -1.0]]])
    assert FactorizationMachine()(three).tolist() == [[28.0]]


def _set(linear: nn.Linear, weight, bias=None):
    with torch.no_grad():
        linear.weight.copy_(torch.tensor(weight))
        if bias is not None:
            linear.bias.copy_(torch.tensor(bias))


def test_full_rank_cross_layers_by_hand():
    # W = [[1, 2], [0, 1]], b = [1, -1], x0 = [2, 3]
    # layer 1: W x0 + b = [2+6+1, 3-1] = [9, 2]; x0 * that = [18, 6]; + x0 = [20, 9]
    # layer 2: W x1 + b = [20+18+1, 9-1] = [39, 8]; x0 * that = [78, 24]; + x1 = [98, 33]
    cross = CrossNetwork(width=2, num_layers=2)
    for layer in cross.layers:
        _set(layer, [[1.0, 2.0], [0.0, 1.0]], [1.0, -1.0])
    x0 = torch.tensor([[2.0, 3.0]])
    assert cross(x0).tolist() == [[98.0, 33.0]]
    cross.layers = cross.layers[:1]
    assert cross(x0).tolist() == [[20.0, 9.0]]


def test_low_rank_cross_layer_by_hand():
    # W = U V^T with V = [1, 1]^T, U = [2, -1]^T (rank 1), b = [0, 1], x0 = [2, 3]
    # V^T x0 = 5; U * 5 + b = [10, -4]; x0 * that = [20, -12]; + x0 = [22, -9]
    cross = CrossNetwork(width=2, num_layers=1, low_rank=1)
    project_down, project_up = cross.layers[0]
    _set(project_down, [[1.0, 1.0]])
    _set(project_up, [[2.0], [-1.0]], [0.0, 1.0])
    assert cross(torch.tensor([[2.0, 3.0]])).tolist() == [[22.0, -9.0]]


def test_deepfm_by_hand():
    # one dense feature x = 1, D = 2, F = 2; bottom Linear(1 -> 2) with w = [1, 2], b = 0, then ReLU -> [1, 2]
    # fields [1, 2], e1 = [3, 0], e2 = [0, 1]: FM = sum of pairwise dots = 3 + 2 + 0 = 5
    # first order: dense 0.5 * 1 + 0.25 = 0.75; embeddings [1, 1, 1, -1] . [3, 0, 0, 1] = 3 - 1 = 2
    # deep: last layer zeroed -> 0.   logit = 0.75 + 2 + 5 = 7.75
    model = DeepFM(num_dense=1, num_features=2, dim=2, bottom_mlp=[2], deep_mlp=[4])
    _set(model.bottom[0], [[1.0], [2.0]], [0.0, 0.0])
    _set(model.dense_first_order, [[0.5]], [0.25])
    _set(model.embedding_first_order, [[1.0, 1.0, 1.0, -1.0]])
    deep_out = model.deep[-1]
    _set(deep_out, torch.zeros_like(deep_out.weight).tolist(), [0.0])
    logits = model(torch.tensor([[1.0]]), torch.tensor([[[3.0, 0.0], [0.0, 1.0]]]))
    assert logits.tolist() == [7.75]


def test_dcnv2_x0_is_bottom_output_then_flattened_embeddings():
    # no bottom MLP, one full-rank cross layer with W = 0, b = 1: cross(x0) = x0 * 1 + x0 = 2 x0.
    # top = one Linear with weights [1, 10, 100] and bias 0 over x0 = [dense, e1] = [1, 2, 3]
    # -> 2 * (1 + 20 + 300) = 642
    model = DCNv2(num_dense=1, num_features=1, dim=2, bottom_mlp=[], top_mlp=[], cross_layers=1)
    _set(model.cross.layers[0], [[0.0] * 3] * 3, [1.0, 1.0, 1.0])
    _set(model.top[0], [[1.0, 10.0, 100.0]], [0.0])
    assert model(torch.tensor([[1.0]]), torch.tensor([[[2.0, 3.0]]])).tolist() == [642.0]


def test_mlperf_dcnv2_is_expressible():
    cfg = ModelConfig(
        name="dcnv2",
        bottom_mlp=[512, 256, 128],
        top_mlp=[1024, 1024, 512, 256],
        cross_layers=3,
        cross_low_rank=512,
    )
    model = build_model(cfg, num_dense=13, num_features=26, dim=128)
    # bottom 13-512-256-128: 7168 + 131328 + 32896 = 171392
    # cross over x0 = 128 + 26*128 = 3456, rank 512: 3 * (3456*512 + 512*3456 + 3456) = 10627200
    # top 3456-1024-1024-512-256-1: 3539968 + 1049600 + 524800 + 131328 + 257 = 5245953
    assert sum(p.numel() for p in model.parameters()) == 171392 + 10627200 + 5245953
    dense = torch.randn(2, 13)
    pooled = torch.randn(2, 26, 128)
    assert model(dense, pooled).shape == (2,)


# ---- model.init = "dlrm" (models/init.py) ----------------------------------------------------------------------
def _moments(x: torch.Tensor) -> tuple[float, float, float]:
    """Sample mean, std and kurtosis E[(x - mean)^4] / std^4 (3 for a normal, 1.8 for a uniform)."""
    x = x.detach().double().flatten()
    mean, std = float(x.mean()), float(x.std())
    return mean, std, float(((x - mean) ** 4).mean()) / std**4


def _linears(model):
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]


def test_dlrm_init_weight_of_a_1024x1024_layer_matches_the_formula():
    cfg = ModelConfig(name="dlrm", bottom_mlp=[1024, 1024, 16], top_mlp=[16], init="dlrm")
    layer = build_model(cfg, NUM_DENSE, NUM_FEATURES, DIM, seed=3).bottom[2]
    assert tuple(layer.weight.shape) == (1024, 1024)
    mean, std, kurtosis = _moments(layer.weight)
    # N(0, sqrt(2 / (1024 + 1024))) = N(0, 1/32). n = 2^20 values: standard errors sigma / sqrt(n) (mean),
    # sigma / sqrt(2n) (std), sqrt((E z^8 - (E z^4)^2) / n) = sqrt(96 / n) (4th moment); tolerances: 5 of them
    sigma, n = (2 / 2048) ** 0.5, 2**20
    assert abs(mean) < 5 * sigma / n**0.5
    assert abs(std - sigma) < 5 * sigma / (2 * n) ** 0.5
    # normal, not uniform (torch's default: 1.8, std 1/sqrt(3 * 1024))
    assert abs(kurtosis - 3.0) < 5 * (96 / n) ** 0.5


def test_dlrm_init_bias_std_is_sqrt_one_over_fan_out():
    cfg = ModelConfig(name="dlrm", bottom_mlp=[65536, 16], top_mlp=[16], init="dlrm")
    bias = build_model(cfg, NUM_DENSE, NUM_FEATURES, DIM, seed=0).bottom[0].bias
    mean, std, _ = _moments(bias)
    # N(0, sqrt(1 / 65536)) = N(0, 1/256) over 65536 biases: standard errors sigma / 256 (mean), sigma / 362 (std)
    sigma = 1 / 256
    assert abs(mean) < 5 * sigma / 256
    assert abs(std - sigma) < 5 * sigma / 362


@pytest.mark.parametrize("name", list(CONFIGS))
def test_dlrm_init_covers_every_linear(name):
    cfg = ModelConfig(**{**CONFIGS[name].__dict__, "init": "dlrm"})
    torch.manual_seed(0)
    model = build_model(cfg, NUM_DENSE, NUM_FEATURES, DIM, seed=7)
    torch.manual_seed(1)  # a different global RNG: nothing of the model may come from it
    again = build_model(cfg, NUM_DENSE, NUM_FEATURES, DIM, seed=7)
    for key, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), f"{key} was not re-drawn from the seed"
    assert not torch.equal(
        model.state_dict()[_linears(model)[0][0] + ".weight"],
        build_model(cfg, NUM_DENSE, NUM_FEATURES, DIM, seed=8).state_dict()[
            _linears(model)[0][0] + ".weight"
        ],
    )
    z = []
    for layer_name, layer in _linears(model):
        fan_out, fan_in = layer.weight.shape
        z.append(layer.weight.flatten() / (2 / (fan_in + fan_out)) ** 0.5)
        if layer.bias is None:
            continue
        if layer_name.startswith("cross."):  # cross layers: zero bias (models/init.py)
            assert torch.equal(layer.bias, torch.zeros_like(layer.bias)), layer_name
        else:
            assert (layer.bias != 0).all(), layer_name
            z.append(layer.bias / (1 / fan_out) ** 0.5)
    # every value scaled by its own formula's sigma: N(0, 1) as a whole
    _, std, _ = _moments(torch.cat(z))
    assert abs(std - 1) < 5 / (2 * sum(v.numel() for v in z)) ** 0.5, std
    assert sum(p.numel() for _, layer in _linears(model) for p in layer.parameters()) == sum(
        p.numel() for p in model.parameters()
    )  # every parameter lives in a Linear: all were covered


def test_torch_init_is_the_default_and_unchanged():
    cfg = CONFIGS["dcnv2-lowrank-stacked"]
    assert cfg.init == "torch"
    torch.manual_seed(0)
    model = build_model(cfg, NUM_DENSE, NUM_FEATURES, DIM, seed=5)
    torch.manual_seed(0)
    plain = DCNv2(
        NUM_DENSE,
        NUM_FEATURES,
        DIM,
        cfg.bottom_mlp,
        cfg.top_mlp,
        cross_layers=cfg.cross_layers,
        cross_low_rank=cfg.cross_low_rank,
    )  # nn.Linear's own init
    for key, value in model.state_dict().items():
        assert torch.equal(value, plain.state_dict()[key]), key


def _dense_init(rank, world_size, group, toml):
    _, parts = load_parts(
        ["--config", toml, "--model.init", "dlrm", "--run.seed", "11"], rank, world_size, group
    )
    return dense_state(parts)


def test_dlrm_init_same_weights_at_w1_and_w2(tmp_path):
    from tests.support.dist_utils import run_distributed

    toml = tmp_path / "c.toml"
    toml.write_text(
        '[model]\nname = "dcnv2"\nbottom_mlp = [8, 4]\ntop_mlp = [8]\ncross_low_rank = 3\n[embedding]\ndim = 4\n'
        '[[embedding.tables]]\nname = "a"\nnum_embeddings = 20\n'
        '[[embedding.tables]]\nname = "b"\nnum_embeddings = 7\n'
    )
    one, two = _dense_init(0, 1, None, str(toml)), run_distributed(_dense_init, 2, str(toml))
    assert one.keys() == two.keys() and any(k.startswith("cross.") for k in one)
    for key, value in one.items():
        assert torch.equal(value, two[key]), key


def test_embedding_init_is_dlrms_uniform():
    # facebookresearch/dlrm: rows ~ U(-sqrt(1/rows), +sqrt(1/rows)); RecFuse's hash-based init already is that law
    from embedding import EmbeddingCollection, SparseOptimizer, Table

    rows, dim = 65536, 16
    weight = EmbeddingCollection(
        [Table("t", rows, dim, "sum", ("t",))], SparseOptimizer("sgd", 0.1)
    ).weight
    bound = (1 / rows) ** 0.5
    mean, std, kurtosis = _moments(weight)
    # U(-b, b): std b / sqrt(3), kurtosis 1.8. n = 2^20 values: standard errors b / sqrt(3n) (mean), b / sqrt(15n)
    # (std: sqrt(Var x^2) / (2 sigma sqrt(n)) with Var x^2 = b^4 (1/5 - 1/9)), sqrt((9 - 1.8^2) / n) = 2.4 / sqrt(n)
    # (4th moment of z = x / sigma, uniform on +-sqrt(3)); tolerances: 5 of them
    n = rows * dim
    assert bound * 0.999 < float(weight.abs().max()) <= bound
    assert abs(mean) < 5 * bound / (3 * n) ** 0.5
    assert abs(std - bound / 3**0.5) < 5 * bound / (15 * n) ** 0.5
    assert abs(kurtosis - 1.8) < 5 * 2.4 / n**0.5
