"""models.flops against torch's own FLOP counter on the real modules (forward and forward+backward)."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from models import build_model
from models.flops import dense_flops_per_sample
from training.config import ModelConfig

TOLERANCE = 0.02

# (id, ModelConfig, num_dense, num_features, dim)
CASES = [
    ("dlrm-small", ModelConfig(name="dlrm", bottom_mlp=[64, 16], top_mlp=[64, 32]), 13, 8, 16),
    (
        "dlrm-wide",
        ModelConfig(name="dlrm", bottom_mlp=[128, 64, 32], top_mlp=[256, 128]),
        13,
        26,
        32,
    ),
    (
        "dcnv2-full-stacked",
        ModelConfig(name="dcnv2", bottom_mlp=[32, 16], top_mlp=[64, 32], cross_layers=3),
        13,
        6,
        16,
    ),
    (
        "dcnv2-lowrank-stacked",
        ModelConfig(
            name="dcnv2", bottom_mlp=[32, 16], top_mlp=[64, 32], cross_layers=2, cross_low_rank=8
        ),
        13,
        6,
        16,
    ),
    (
        "dcnv2-full-parallel",
        ModelConfig(
            name="dcnv2",
            bottom_mlp=[32, 16],
            top_mlp=[],
            cross_layers=2,
            dcn_structure="parallel",
            deep_mlp=[64, 32],
        ),
        13,
        6,
        16,
    ),
    (
        "dcnv2-lowrank-parallel",
        ModelConfig(
            name="dcnv2",
            bottom_mlp=[32, 16],
            top_mlp=[32],
            cross_layers=3,
            cross_low_rank=16,
            dcn_structure="parallel",
            deep_mlp=[64, 32],
        ),
        13,
        6,
        16,
    ),
    (
        "dcnv2-mlperf",
        ModelConfig(
            name="dcnv2",
            bottom_mlp=[512, 256, 128],
            top_mlp=[1024, 1024, 512, 256],
            cross_layers=3,
            cross_low_rank=512,
        ),
        13,
        26,
        128,
    ),
    ("deepfm-small", ModelConfig(name="deepfm", bottom_mlp=[16], deep_mlp=[64, 32]), 13, 8, 16),
    (
        "deepfm-wide",
        ModelConfig(name="deepfm", bottom_mlp=[64, 32], deep_mlp=[400, 400, 400]),
        13,
        26,
        32,
    ),
]


def _counted_per_sample(model, num_dense, num_features, dim, batch=4, backward=False):
    torch.manual_seed(0)
    dense = torch.randn(batch, num_dense)
    # in training, pooled embeddings need gradients (they flow back to the tables); raw dense does not
    pooled = torch.randn(batch, num_features, dim, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        logits = model(dense, pooled)
        if backward:
            logits.sum().backward()
    return counter.get_total_flops() / batch


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_analytic_flops_match_flop_counter(case):
    _, cfg, num_dense, num_features, dim = case
    model = build_model(cfg, num_dense, num_features, dim)
    analytic = dense_flops_per_sample(cfg, num_dense, num_features, dim)

    forward = _counted_per_sample(model, num_dense, num_features, dim)
    training = _counted_per_sample(model, num_dense, num_features, dim, backward=True)
    # the counter sees matmuls only (mm, addmm, bmm), so the matmul part must match it exactly ...
    assert analytic.matmul == pytest.approx(forward, rel=1e-9)
    assert 3 * analytic.matmul - analytic.raw_input_matmul == pytest.approx(training, rel=1e-9)
    # ... and the total, with the elementwise cross/FM terms the counter ignores, within 2%
    assert analytic.forward == pytest.approx(forward, rel=TOLERANCE)
    assert analytic.training == pytest.approx(training, rel=TOLERANCE)


def test_mlperf_dcnv2_forward_flops_by_hand():
    # bottom 13-512-256-128, x0 = 128 + 26*128 = 3456, 3 low-rank (512) cross layers, top 3456-1024-1024-512-256-1
    bottom = 13 * 512 + 512 * 256 + 256 * 128
    cross = 3 * 2 * 3456 * 512
    top = 3456 * 1024 + 1024 * 1024 + 1024 * 512 + 512 * 256 + 256 * 1
    cfg = ModelConfig(
        name="dcnv2",
        bottom_mlp=[512, 256, 128],
        top_mlp=[1024, 1024, 512, 256],
        cross_layers=3,
        cross_low_rank=512,
    )
    flops = dense_flops_per_sample(cfg, 13, 26, 128)
    assert flops.matmul == 2 * (bottom + cross + top)
    assert flops.elementwise == 3 * 2 * 3456
