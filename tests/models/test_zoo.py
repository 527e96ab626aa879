"""DCNMix, xDeepFM (CIN), AutoInt, FiBiNET and Wide&Deep on small cases computed by hand (numbers derived in
comments). Shapes, gradient flow, dlrm init and the bf16 flat buffer: CONFIGS of tests/models/test_models.py."""

import math

import pytest
import torch
from torch import nn

from models import ARCHITECTURES, AutoInt, DCNMix, FiBiNET, WideDeep, XDeepFM, build_model
from models.autoint import InteractingLayer
from models.dcnmix import MixtureCrossNetwork
from models.fibinet import BilinearInteraction, SENet
from models.xdeepfm import CompressedInteraction
from tests.models.test_models import CONFIGS
from training.config import ModelConfig


def _set(linear: nn.Linear, weight, bias=None):
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
        if bias is not None:
            linear.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))


def _dcnmix_case(gate_weight):
    # width 2, one layer, K = 2 experts of rank 1; V_1 = [1, 0], V_2 = [0, 1]; C_1 = 1, C_2 = 2;
    # [U_1 U_2] = identity, b = [0, 1]
    cross = MixtureCrossNetwork(width=2, num_layers=1, low_rank=1, num_experts=2)
    layer = cross.layers[0]
    _set(layer.down, [[1.0, 0.0], [0.0, 1.0]])
    _set(layer.mix[0], [[1.0]])
    _set(layer.mix[1], [[2.0]])
    _set(layer.up, [[1.0, 0.0], [0.0, 1.0]], [0.0, 1.0])
    _set(layer.gate, gate_weight)
    return cross


def test_dcnmix_cross_layer_by_hand():
    # x0 = [2, 3]: V^T x0 = [2, 3] (ReLU keeps it), C: [2, 6]
    # gate 0: softmax = [1/2, 1/2] -> [1, 3]; U + b -> [1, 4]; x0 * that = [2, 12]; + x0 = [4, 15]
    x0 = torch.tensor([[2.0, 3.0]])
    assert _dcnmix_case([[0.0, 0.0], [0.0, 0.0]])(x0).tolist() == [[4.0, 15.0]]
    # gate logits W_g x0 = [2, 0]: G = [e^2, 1] / (e^2 + 1); U (G h) + b = [2 G_1, 6 G_2 + 1]
    # -> x0 * that + x0 = [4 G_1 + 2, 18 G_2 + 3 + 3]
    g1 = math.exp(2) / (math.exp(2) + 1)
    got = _dcnmix_case([[1.0, 0.0], [0.0, 0.0]])(x0)
    assert got.tolist()[0] == pytest.approx([4 * g1 + 2, 18 * (1 - g1) + 6], rel=1e-6)


def test_dcnmix_model_by_hand():
    # no bottom MLP: x0 = [dense, e1] = [2, 3] -> the cross case above: [4, 15]; top Linear [1, 1] -> 19
    model = DCNMix(1, 1, 1, [], [], cross_layers=1, cross_low_rank=1, cross_experts=2)
    model.cross = _dcnmix_case([[0.0, 0.0], [0.0, 0.0]])
    _set(model.top[0], [[1.0, 1.0]], [0.0])
    assert model(torch.tensor([[2.0]]), torch.tensor([[[3.0]]])).tolist() == [19.0]


def test_cin_by_hand():
    # X0 = [[1, 2], [3, 4]] (n = 2 fields, D = 2). Products X^0_i * X^0_j, (i, j) row-major:
    # [1, 4], [3, 8], [3, 8], [9, 16]; W^1 = [1, 0, 0, -1] -> X^1 = [1 - 9, 4 - 16] = [-8, -12], pooled -20
    # layer 2: X^1 * X^0_j = [-8, -24], [-24, -48]; W^2 = [1, 1] -> [-32, -72], pooled -104
    cin = CompressedInteraction(num_fields=2, layer_sizes=[1, 1])
    _set(cin.layers[0], [[1.0, 0.0, 0.0, -1.0]])
    _set(cin.layers[1], [[1.0, 1.0]])
    assert cin(torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])).tolist() == [[-20.0, -104.0]]


def test_xdeepfm_by_hand():
    # dense x = 1 through bottom Linear(1 -> 2), w = [1, 2]: field 0 = [1, 2]; e1 = [3, 4]: X0 as in the CIN case,
    # one CIN layer -> pooled -20, times the CIN logit weight 0.5 = -10
    # first order: dense 0.5 * 1 + 0.25 = 0.75; embeddings [1, -1] . [3, 4] = -1
    # deep (deep_mlp = []: one Linear over [1, 2, 3, 4]) w = [0, 0, 0, 1], b = 1 -> 5.   logit = -5.25
    model = XDeepFM(1, 1, 2, bottom_mlp=[2], cin_layers=[1], deep_mlp=[])
    _set(model.bottom[0], [[1.0], [2.0]], [0.0, 0.0])
    _set(model.cin.layers[0], [[1.0, 0.0, 0.0, -1.0]])
    _set(model.cin_logit, [[0.5]])
    _set(model.first_order.dense, [[0.5]], [0.25])
    _set(model.first_order.embeddings, [[1.0, -1.0]])
    _set(model.deep[0], [[0.0, 0.0, 0.0, 1.0]], [1.0])
    assert model(torch.tensor([[1.0]]), torch.tensor([[[3.0, 4.0]]])).tolist() == [-5.25]


def _attention_layer():
    # one head of dim 1 over 1-dim fields: W_q = 1, W_k = c = ln 3, W_v = 2, W_res = 0
    layer = InteractingLayer(in_dim=1, heads=1, head_dim=1)
    _set(layer.qkv, [[1.0], [math.log(3.0)], [2.0]])
    _set(layer.residual, [[0.0]])
    return layer


def test_interacting_layer_by_hand():
    # fields e = [1, 2]; q = e, k = c e with c = ln 3, v = 2 e = [2, 4]; scale 1/sqrt(1)
    # field 1: scores [c, 2c] -> softmax [1, 3] / 4 -> 2/4 + 4*3/4 = 3.5
    # field 2: scores [2c, 4c] -> softmax [1, 9] / 10 -> 2/10 + 4*9/10 = 3.8
    out = _attention_layer()(torch.tensor([[[1.0], [2.0]]]))
    assert out.flatten().tolist() == pytest.approx([3.5, 3.8], rel=1e-6)
    # W_q = 0: uniform attention, both fields attend to mean(v) = 3; W_res = -1: ReLU([3 - 1, 3 - 2]) = [2, 1]
    layer = _attention_layer()
    _set(layer.qkv, [[0.0], [1.0], [2.0]])
    _set(layer.residual, [[-1.0]])
    assert layer(torch.tensor([[[1.0], [2.0]]])).flatten().tolist() == pytest.approx([2.0, 1.0])


def test_interacting_layer_concatenates_heads_in_order():
    # two heads of dim 1, W_q = 0 (uniform attention), v_1 = e, v_2 = -e: heads [mean e, -mean e] = [1.5, -1.5]
    # for both fields; ReLU -> [1.5, 0]. Rows of qkv: q (heads 1, 2), k (1, 2), v (1, 2)
    layer = InteractingLayer(in_dim=1, heads=2, head_dim=1)
    _set(layer.qkv, [[0.0], [0.0], [1.0], [1.0], [1.0], [-1.0]])
    _set(layer.residual, [[0.0], [0.0]])
    assert layer(torch.tensor([[[1.0], [2.0]]])).tolist() == [[[1.5, 0.0], [1.5, 0.0]]]


def test_autoint_by_hand():
    # dense x = 1 through bottom Linear(1 -> 1), w = 1: field 0 = [1]; e1 = [2]: fields [1, 2] -> the layer above
    # gives [3.5, 3.8]; head (deep_mlp = []) w = [1, -1], b = 0.5 -> 3.5 - 3.8 + 0.5 = 0.2
    model = AutoInt(
        1, 1, 1, [1], attention_layers=1, attention_heads=1, attention_dim=1, deep_mlp=[]
    )
    _set(model.bottom[0], [[1.0]], [0.0])
    model.attention[0] = _attention_layer()
    _set(model.head, [[1.0, -1.0]], [0.5])
    got = model(torch.tensor([[1.0]]), torch.tensor([[[2.0]]]))
    assert got.tolist() == pytest.approx([0.2], rel=1e-5)


def test_senet_by_hand():
    # fields [[1, 3], [2, 6]]: z = [2, 4]; n = 2, r = 2 -> 1 hidden; W_1 = [1, 0] -> ReLU(2) = 2
    # W_2 = [0, 0.5] -> sigmoid([0, 1]) = [0.5, s] with s = 1 / (1 + e^-1); v = [[0.5, 1.5], [2 s, 6 s]]
    senet = SENet(num_fields=2, reduction=2)
    _set(senet.squeeze, [[1.0, 0.0]])
    _set(senet.excite, [[0.0], [0.5]])
    s = 1 / (1 + math.exp(-1))
    got = senet(torch.tensor([[[1.0, 3.0], [2.0, 6.0]]]))
    assert got.flatten().tolist() == pytest.approx([0.5, 1.5, 2 * s, 6 * s], rel=1e-6)


@pytest.mark.parametrize(
    "kind, weights, want",
    [
        # W = [[1, 1], [0, 1]]: v W^T of v0 = [3, 2], of v1 = [7, 4]
        # p01 = [3, 2] * [3, 4] = [9, 8]; p02 = [3, 2] * [0, 1] = [0, 2]; p12 = [7, 4] * [0, 1] = [0, 4]
        ("field_all", [[[1.0, 1.0], [0.0, 1.0]]], [[9.0, 8.0], [0.0, 2.0], [0.0, 4.0]]),
        # W_0 = I, W_1 = 2 I: p01 = [3, 8]; p02 = [0, 2]; p12 = [6, 8] * [0, 1] = [0, 8]
        (
            "field_each",
            [[[1.0, 0.0], [0.0, 1.0]], [[2.0, 0.0], [0.0, 2.0]]],
            [[3.0, 8.0], [0.0, 2.0], [0.0, 8.0]],
        ),
        # W_01 = I and W_02 = -I (stacked in field 0's Linear), W_12 = swap:
        # p01 = [3, 8]; p02 = [-1, -2] * [0, 1] = [0, -2]; p12 = [4, 3] * [0, 1] = [0, 3]
        (
            "field_interaction",
            [[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]], [[0.0, 1.0], [1.0, 0.0]]],
            [[3.0, 8.0], [0.0, -2.0], [0.0, 3.0]],
        ),
    ],
)
def test_bilinear_interaction_by_hand(kind, weights, want):
    # v0 = [1, 2], v1 = [3, 4], v2 = [0, 1]; pairs (0, 1), (0, 2), (1, 2)
    bilinear = BilinearInteraction(num_fields=3, dim=2, kind=kind)
    assert len(bilinear.weights) == len(weights)
    for linear, w in zip(bilinear.weights, weights, strict=True):
        _set(linear, w)
    assert bilinear(torch.tensor([[[1.0, 2.0], [3.0, 4.0], [0.0, 1.0]]])).tolist() == [want]


def test_fibinet_by_hand():
    # dense x = 1 through bottom Linear(1 -> 2), w = [1, 2]: field 0 = [1, 2]; e1 = [3, 4]
    # field_all W = I on E: p = [1, 2] * [3, 4] = [3, 8]. SENET: W_1 = 0 -> sigmoid(0) = 1/2 for both fields,
    # V = E / 2 -> p(V) = [0.75, 2]. deep (deep_mlp = []) w = [1, 0, 0, 1] over [3, 8, 0.75, 2] -> 3 + 2 = 5
    # first order: 0.5 * 1 + 0.25 + [1, -1] . [3, 4] = -0.25.   logit = 4.75
    model = FiBiNET(1, 1, 2, [2], senet_reduction=3, bilinear_type="field_all", deep_mlp=[])
    _set(model.bottom[0], [[1.0], [2.0]], [0.0, 0.0])
    _set(model.bilinear.weights[0], [[1.0, 0.0], [0.0, 1.0]])
    _set(model.senet_bilinear.weights[0], [[1.0, 0.0], [0.0, 1.0]])
    _set(model.senet.squeeze, [[0.0, 0.0]])
    _set(model.first_order.dense, [[0.5]], [0.25])
    _set(model.first_order.embeddings, [[1.0, -1.0]])
    _set(model.deep[0], [[1.0, 0.0, 0.0, 1.0]], [0.0])
    assert model(torch.tensor([[1.0]]), torch.tensor([[[3.0, 4.0]]])).tolist() == [4.75]


def test_wide_deep_by_hand():
    # dense x = 2, e1 = [3, 4]. wide w = [1, 1, -1], b = 0.5 over [2, 3, 4] -> 1.5
    # deep: no bottom MLP, one Linear (deep_mlp = []) w = [1, 0, 1], b = -1 over [2, 3, 4] -> 5.   logit 6.5
    model = WideDeep(1, 1, 2, bottom_mlp=[], deep_mlp=[])
    _set(model.wide, [[1.0, 1.0, -1.0]], [0.5])
    _set(model.deep[0], [[1.0, 0.0, 1.0]], [-1.0])
    assert model(torch.tensor([[2.0]]), torch.tensor([[[3.0, 4.0]]])).tolist() == [6.5]


def test_every_zoo_model_is_in_configs_and_dispatches():
    for name, cls in (
        ("dcnmix", DCNMix),
        ("xdeepfm", XDeepFM),
        ("autoint", AutoInt),
        ("fibinet", FiBiNET),
        ("wide_deep", WideDeep),
    ):
        assert name in ARCHITECTURES and any(c.name == name for c in CONFIGS.values())
        cfg = next(c for c in CONFIGS.values() if c.name == name)
        assert type(build_model(cfg, 13, 5, 16)) is cls


def test_model_level_errors_name_the_key():
    with pytest.raises(ValueError, match="model.cross_low_rank is 0; model.name 'dcnmix'"):
        DCNMix(13, 5, 16, [16], [8], cross_layers=1, cross_low_rank=0, cross_experts=2)
    with pytest.raises(ValueError, match="model.cin_layers is \\[\\]"):
        XDeepFM(13, 5, 16, [16], cin_layers=[], deep_mlp=[8])
    with pytest.raises(ValueError, match="model.bilinear_type is 'pairs'"):
        FiBiNET(13, 5, 16, [16], senet_reduction=3, bilinear_type="pairs", deep_mlp=[8])
    with pytest.raises(ValueError, match="model.bottom_mlp must end with the embedding dim 16"):
        AutoInt(13, 5, 16, [8], 1, 1, 4, [])
    with pytest.raises(ValueError, match="model.attention_heads must be at least 1, got 0"):
        build_model(ModelConfig(name="autoint", bottom_mlp=[16], attention_heads=0), 13, 5, 16)
