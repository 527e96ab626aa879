"""models.network: the Linear parameters in one flat buffer, cast once under autocast, give the bits that
per-parameter autocast casts give, forward and backward, eager and compiled."""

import copy

import pytest
import torch
from torch import nn

from models import build_model
from models.network import Network, dense_input_dtype, flatten_linears_
from models.objective import Objective
from tests.models.test_models import BATCH, CONFIGS, DIM, NUM_DENSE, NUM_FEATURES
from training.launch_census import DenseCall
from training.launch_prediction import predict_compiled_dense


def _pair(name: str):
    """(a network with one flat buffer, the same network with a storage per parameter)."""
    flat = build_model(CONFIGS[name], NUM_DENSE, NUM_FEATURES, DIM, seed=3)
    plain = copy.deepcopy(flat)
    del plain._flat_names  # a storage per parameter again once moved
    plain.double().float()
    return flat, plain


def _step(net, dense, pooled, compiled=False):
    """(output, grad of pooled, grads of the parameters) of one bf16-autocast forward and backward."""
    net.zero_grad(set_to_none=True)
    pooled = pooled.clone().requires_grad_()
    call = torch.compile(net) if compiled else net
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = call(dense, pooled)
    (out.float() * torch.linspace(-1, 1, out.numel())).sum().backward()
    return out.detach(), pooled.grad, [p.grad for p in net.parameters()]


def _inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(BATCH, NUM_DENSE, generator=g), torch.randn(
        BATCH, NUM_FEATURES, DIM, generator=g
    )


def _storages(net) -> set:
    return {p.untyped_storage().data_ptr() for p in net.parameters()}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_one_cast_gives_the_bits_of_per_parameter_casts(name):
    flat, plain = _pair(name)
    assert len(_storages(flat)) == 1 and len(_storages(plain)) == len(list(plain.parameters()))
    got, want = _step(flat, *_inputs()), _step(plain, *_inputs())
    assert torch.equal(got[0], want[0]) and got[0].dtype == torch.bfloat16
    assert torch.equal(got[1], want[1])
    for g, w in zip(got[2], want[2], strict=True):
        assert g.dtype == torch.float32 and torch.equal(g, w)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_dense_input_in_the_compute_dtype_gives_the_same_bits(name):
    """A network that casts its dense features first (models.network.dense_input_dtype) takes them in bf16:
    the same output and gradients as float32 ones cast inside."""
    net = build_model(CONFIGS[name], NUM_DENSE, NUM_FEATURES, DIM, seed=3)
    dtype = dense_input_dtype(Objective(net), torch.bfloat16)
    assert dense_input_dtype(net, None) == torch.float32
    # a bottom MLP's Linear is their first op on the dense features
    cfg = CONFIGS[name]
    casts_first = cfg.name in ("dlrm", "dcnv2", "dcnmix") and bool(cfg.bottom_mlp)
    assert dtype == (torch.bfloat16 if casts_first else torch.float32)
    if not casts_first:
        return
    dense, pooled = _inputs()
    got, want = _step(net, dense.to(dtype), pooled), _step(net, dense, pooled)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert all(torch.equal(g, w) for g, w in zip(got[2], want[2], strict=True))


@pytest.mark.slow
def test_compiled_one_cast_stays_within_bf16_round_off_of_eager():
    """Inductor fuses across bf16 roundings (eager rounds at every cast): compiled code differs from eager
    by bf16 round-off with per-parameter casts and with the flat buffer alike. With the flat buffer the
    weight gradients, rounded to bf16 as eager rounds them, equal eager's (inductor's compile of the
    per-parameter casts skips that rounding)."""
    flat, plain = _pair("dlrm")
    eager = _step(plain, *_inputs())
    got = _step(flat, *_inputs(), compiled=True)
    for g, e in zip([got[0], got[1], *got[2]], [eager[0], eager[1], *eager[2]], strict=True):
        bf16_round_off = 2**-7 * e.float().abs().max()
        assert (g.float() - e.float()).abs().max() <= bf16_round_off
    weights = [i for i, (n, _) in enumerate(flat.named_parameters()) if n.endswith("weight")]
    assert all(torch.equal(got[2][i], eager[2][i]) for i in weights)


def test_parameters_stay_parameters_and_slices_of_one_buffer():
    net = build_model(CONFIGS["dcnv2-lowrank-parallel"], NUM_DENSE, NUM_FEATURES, DIM)
    keys = set(net.state_dict())
    assert "_flat_linears" not in keys and all(k.endswith((".weight", ".bias")) for k in keys)
    state = {k: torch.randn_like(v) for k, v in net.state_dict().items()}
    for moved in (net, copy.deepcopy(net), net.to(torch.float64).to(torch.float32)):
        assert len(_storages(moved)) == 1
        assert moved._flat_linears.untyped_storage().data_ptr() in _storages(moved)
    net.load_state_dict(state)  # copies into the slices
    assert len(_storages(net)) == 1
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in state.items())
    offset, shape = net._flat_layout[-1]
    last = net.get_parameter(net._flat_names[-1])
    assert torch.equal(net._flat_linears[offset : offset + shape.numel()].view(shape), last)


def test_without_autocast_the_parameters_are_used_as_they_are():
    flat, plain = _pair("deepfm")
    dense, pooled = _inputs()
    assert torch.equal(flat(dense, pooled), plain(dense, pooled))


def test_a_parameter_moved_out_of_the_buffer_is_named():
    net = build_model(CONFIGS["dlrm"], NUM_DENSE, NUM_FEATURES, DIM)
    net.top[0].bias.data = net.top[0].bias.data.clone()
    with pytest.raises(RuntimeError, match="parameter top.0.bias no longer lives in the flat"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            net(*_inputs())


class _Head(Network):
    def __init__(self, outputs: int):
        super().__init__()
        self.hidden, self.out = nn.Linear(NUM_DENSE, 8), nn.Linear(8, outputs)

    def logits(self, dense, pooled):
        return self.out(self.hidden(dense)).sum(1)


@pytest.mark.slow
def test_a_one_output_layer_launches_no_copy_of_its_bias():
    """Compiled (predicted on CPU, training.launch_prediction), a one-element bias is read in place: a
    one-output head launches what a two-output head does."""
    launches = []
    for outputs in (1, 2):
        net = flatten_linears_(_Head(outputs))
        call = DenseCall(net, _inputs())
        forward = predict_compiled_dense(call, torch.bfloat16)["forward"]
        launches.append(sum(forward.values()))
    assert launches[0] == launches[1]
