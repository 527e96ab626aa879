"""models.flops for DCNMix, xDeepFM, AutoInt, FiBiNET and Wide&Deep against torch's FLOP counter on the real
modules (forward and forward+backward), and the config checks of their keys."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import models.autoint
from models import build_model
from models.flops import dense_flops_per_sample
from training.config import ConfigError, ModelConfig, load_config

# (id, ModelConfig, num_dense, num_features, dim)
CASES = [
    (
        "dcnmix-stacked",
        ModelConfig(
            name="dcnmix", bottom_mlp=[32, 16], top_mlp=[64], cross_layers=3, cross_low_rank=8
        ),
        13,
        6,
        16,
    ),
    (
        "dcnmix-parallel-one-expert",
        ModelConfig(
            name="dcnmix",
            bottom_mlp=[],
            top_mlp=[],
            cross_layers=2,
            cross_low_rank=4,
            cross_experts=1,
            dcn_structure="parallel",
            deep_mlp=[32],
        ),
        13,
        6,
        16,
    ),
    ("xdeepfm", ModelConfig(name="xdeepfm", bottom_mlp=[16], cin_layers=[16, 8, 4]), 13, 8, 16),
    (
        "autoint+",
        ModelConfig(name="autoint", bottom_mlp=[32, 16], attention_layers=3, attention_heads=2),
        13,
        8,
        16,
    ),
    (
        "autoint",
        ModelConfig(
            name="autoint", bottom_mlp=[8], attention_heads=4, attention_dim=4, deep_mlp=[]
        ),
        13,
        5,
        8,
    ),
    (
        "fibinet-all",
        ModelConfig(name="fibinet", bottom_mlp=[16], bilinear_type="field_all"),
        13,
        7,
        16,
    ),
    (
        "fibinet-each",
        ModelConfig(name="fibinet", bottom_mlp=[16], bilinear_type="field_each"),
        13,
        7,
        16,
    ),
    ("fibinet-interaction", ModelConfig(name="fibinet", bottom_mlp=[16]), 13, 7, 16),
    (
        "wide_deep",
        ModelConfig(name="wide_deep", bottom_mlp=[64, 32], deep_mlp=[128, 64]),
        13,
        8,
        16,
    ),
    ("wide_deep-raw", ModelConfig(name="wide_deep", bottom_mlp=[], deep_mlp=[64]), 13, 8, 16),
]


def _math_attention(q, k, v):
    """scaled_dot_product_attention as the matmuls FlopCounterMode sees (its CPU kernel it does not count)."""
    scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
    return torch.softmax(scores, dim=-1) @ v


def _counted_per_sample(model, num_dense, num_features, dim, batch=4, backward=False):
    torch.manual_seed(0)
    dense = torch.randn(batch, num_dense)
    pooled = torch.randn(batch, num_features, dim, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        logits = model(dense, pooled)
        if backward:
            logits.sum().backward()
    return counter.get_total_flops() / batch


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_analytic_flops_match_flop_counter(case, monkeypatch):
    _, cfg, num_dense, num_features, dim = case
    monkeypatch.setattr(models.autoint.F, "scaled_dot_product_attention", _math_attention)
    model = build_model(cfg, num_dense, num_features, dim)
    analytic = dense_flops_per_sample(cfg, num_dense, num_features, dim)
    forward = _counted_per_sample(model, num_dense, num_features, dim)
    training = _counted_per_sample(model, num_dense, num_features, dim, backward=True)
    assert analytic.matmul == pytest.approx(forward, rel=1e-9)
    assert 3 * analytic.matmul - analytic.raw_input_matmul == pytest.approx(training, rel=1e-9)
    assert analytic.forward == pytest.approx(forward, rel=0.05)
    assert analytic.elementwise > 0 or cfg.name == "wide_deep"


def test_math_attention_is_what_the_model_computes():
    q, k, v = torch.randn(3, 2, 4, 5, 8).unbind(0)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert torch.allclose(_math_attention(q, k, v), want, atol=1e-6)


def test_xdeepfm_flops_by_hand():
    # n = 3 fields (2 features + dense), D = 4, one dense feature, bottom [4], CIN [2], deep_mlp [] (one Linear)
    # bottom 2*1*4 = 8; first order 2*1 + 2*2*4 = 18; CIN 2*(3*3)*2*4 = 144, its logit 2*2 = 4;
    # deep Linear(12 -> 1) 24 -> matmul 198. Elementwise: 3*3*4 products + 2*4 pooling adds = 44
    cfg = ModelConfig(name="xdeepfm", bottom_mlp=[4], cin_layers=[2], deep_mlp=[])
    flops = dense_flops_per_sample(cfg, 1, 2, 4)
    assert (flops.matmul, flops.elementwise, flops.raw_input_matmul) == (198.0, 44.0, 2.0 + 8.0)


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--model.name", "dcnmix"],
            "config key 'model.cross_low_rank' is 0; model.name 'dcnmix' needs each expert's rank >= 1",
        ),
        (
            ["--model.name", "xdeepfm", "--model.cin_layers", "[]"],
            "config key 'model.cin_layers' is []; model.name 'xdeepfm' needs at least one CIN layer",
        ),
        (["--model.cin_layers", "[8, 0]"], "config key 'model.cin_layers' has 0 at position 1"),
        (
            ["--model.attention_heads", "0"],
            "config key 'model.attention_heads' is 0; it must be >= 1",
        ),
        (["--model.cross_experts", "0"], "config key 'model.cross_experts' is 0; it must be >= 1"),
        (
            ["--model.senet_reduction", "0"],
            "config key 'model.senet_reduction' is 0; it must be >= 1",
        ),
        (["--model.bilinear_type", "pairwise"], "config key 'model.bilinear_type' is 'pairwise'"),
        (
            ["--model.name", "autoint", "--model.bottom_mlp", "[64, 8]"],
            "model.name 'autoint' needs it to end with embedding.dim (16)",
        ),
    ],
)
def test_bad_model_keys_are_named(args, message):
    with pytest.raises(ConfigError) as err:
        load_config(args)
    assert message in str(err.value)


def test_zoo_names_load_with_their_defaults():
    for name in ("xdeepfm", "autoint", "fibinet", "wide_deep"):
        assert load_config(["--model.name", name]).model.name == name
    cfg = load_config(["--model.name", "dcnmix", "--model.cross_low_rank", "8"]).model
    assert (cfg.cross_experts, cfg.cross_low_rank) == (4, 8)
    # wide_deep and dcnmix feed their dense tower into a concatenation: any last size
    assert (
        load_config(["--model.name", "wide_deep", "--model.bottom_mlp", "[]"]).model.bottom_mlp
        == []
    )
