"""Every network with tables of several dims (models.projection): the concatenation models take the flat
pooled input at its real width, the others project each table whose dim is not embedding.dim; gradients reach
every feature and projection, and models.flops (projections included) matches torch's FLOP counter."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import models.autoint
from models import ARCHITECTURES, CONCAT_MODELS, build_model
from models.flops import dense_flops_per_sample
from models.projection import FieldProjection
from training.config import ModelConfig

DIM = 16  # embedding.dim: the common dim of the field models
# tables a (4), b (16, two features), c (64), d (4), in feature order
FEATURE_DIMS = [4, 16, 16, 64, 4]
FEATURE_TABLES = ["a", "b", "b", "c", "d"]
CONFIGS = {
    "dlrm": ModelConfig(name="dlrm", bottom_mlp=[8, DIM], top_mlp=[8]),
    "dcnv2": ModelConfig(name="dcnv2", bottom_mlp=[8], top_mlp=[8], cross_layers=2),
    "deepfm": ModelConfig(name="deepfm", bottom_mlp=[DIM], deep_mlp=[8]),
    "dcnmix": ModelConfig(name="dcnmix", bottom_mlp=[8], top_mlp=[8], cross_low_rank=4),
    "xdeepfm": ModelConfig(name="xdeepfm", bottom_mlp=[DIM], cin_layers=[4], deep_mlp=[8]),
    "autoint": ModelConfig(name="autoint", bottom_mlp=[DIM], attention_dim=4, deep_mlp=[8]),
    "fibinet": ModelConfig(name="fibinet", bottom_mlp=[DIM], deep_mlp=[8]),
    "wide_deep": ModelConfig(name="wide_deep", bottom_mlp=[8], deep_mlp=[8]),
}


def _model(name):
    return build_model(CONFIGS[name], 3, len(FEATURE_DIMS), DIM, 0, FEATURE_DIMS, FEATURE_TABLES)


def _math_attention(q, k, v):
    scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
    return torch.softmax(scores, dim=-1) @ v


def test_every_model_is_covered():
    assert sorted(CONFIGS) == sorted(ARCHITECTURES)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_forward_backward_and_flops(name, monkeypatch):
    monkeypatch.setattr(models.autoint.F, "scaled_dot_product_attention", _math_attention)
    model = _model(name)
    torch.manual_seed(0)
    batch = 4
    dense = torch.randn(batch, 3)
    pooled = torch.randn(batch, sum(FEATURE_DIMS), requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        logits = model(dense, pooled)
    assert logits.shape == (batch,) and torch.isfinite(logits).all()
    logits.sum().backward()
    # every feature's columns get a gradient
    for columns in pooled.grad.split(FEATURE_DIMS, dim=1):
        assert columns.abs().sum() > 0
    if name in CONCAT_MODELS:
        assert model.project is None  # the concatenation at its real width
    else:
        # one projection per table whose dim is not DIM (a, c, d), shared by a table's features
        assert isinstance(model.project, FieldProjection)
        widths = sorted(linear.in_features for linear in model.project.linears)
        assert widths == [4, 4, 64]
        for linear in model.project.linears:
            assert linear.out_features == DIM and linear.weight.grad.abs().sum() > 0
        # the projections are in the flat Linear buffer that bf16 autocast casts at once
        flat = model._flat_linears.untyped_storage().data_ptr()
        assert model.project.linears[0].weight.untyped_storage().data_ptr() == flat
    analytic = dense_flops_per_sample(CONFIGS[name], 3, len(FEATURE_DIMS), DIM, FEATURE_DIMS)
    assert analytic.matmul == pytest.approx(counter.get_total_flops() / batch, rel=1e-9)


def test_projection_flops_are_counted():
    cfg = CONFIGS["dlrm"]
    same = dense_flops_per_sample(cfg, 3, len(FEATURE_DIMS), DIM)
    mixed = dense_flops_per_sample(cfg, 3, len(FEATURE_DIMS), DIM, FEATURE_DIMS)
    # features of dims 4, 64 and 4 projected to 16: 2 * (4 + 64 + 4) * 16 per sample
    assert mixed.matmul - same.matmul == 2 * (4 + 64 + 4) * DIM
    # a concatenation model's widths follow the real dims
    wide = dense_flops_per_sample(CONFIGS["wide_deep"], 3, len(FEATURE_DIMS), DIM, FEATURE_DIMS)
    assert (
        wide.matmul == dense_flops_per_sample(CONFIGS["wide_deep"], 3, 1, sum(FEATURE_DIMS)).matmul
    )


def test_one_dim_builds_the_plain_network():
    plain = build_model(CONFIGS["dlrm"], 3, 4, DIM)
    same = build_model(CONFIGS["dlrm"], 3, 4, DIM, 0, [DIM] * 4, list("abcd"))
    assert plain.project is None and same.project is None
    assert plain.state_dict().keys() == same.state_dict().keys()
