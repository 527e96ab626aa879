"""Kernel launches of the training step as a CUDA device would make them, predicted on CPU
(training.launch_census.LaunchCensus, training.launch_prediction).

A GPU step of small kernels is launch-bound. The budget, on the Triton path, with the dense network compiled,
on steps that do not log: <= 60 launches at W = 1 (Kaggle shape), <= 90 at W = 2 (tiny.toml).
"""

import os

import pytest
import torch
import torch.distributed as dist
import triton
import triton.language as tl

from models.mlp import MLP
from tests.support.step_profiles import by_file, step_profile
from training.launch_census import LaunchCensus
from training.launch_prediction import launch_report, predict_cuda_optimizer
from training.launch_table import multi_tensor_launches
from training.stages import StageTimer

THIS = "tests/training/test_launches.py"
STAGE_NAMES = ("input_dist", "lookup", "output_dist", "grad_dist", "sparse_update")


def _line_of(text: str) -> int:
    return next(i for i, line in enumerate(open(__file__), start=1) if text in line)


def _sites(marks: list[tuple[str, str, int]]) -> dict:
    return {f"{THIS}:{_line_of(marker)} {op}": n for marker, op, n in marks}


@triton.jit
def _add_one_kernel(
    x_ptr,  # float32 [n], incremented in place
    n,  # number of elements
    BLOCK: tl.constexpr,  # elements per program
):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(x_ptr + offs, tl.load(x_ptr + offs, mask=mask) + 1, mask=mask)


def test_known_ops_launch_known_kernels():
    y = torch.ones(8, 4)
    with LaunchCensus() as census:
        z = y * 2  # elementwise
        z.view(32), z.t(), z[1:], z.unsqueeze(0).expand(2, 8, 4), z.detach()  # views
        torch.empty(16), torch.empty_like(z)  # allocations
        z.clone()  # contiguous: a memcpy
        z.t().contiguous()  # a transposing copy
        z.sum()  # a reduction
        torch.empty(0).add_(1)  # empty: nothing to launch
        torch.sort(torch.arange(10.0))  # small sort
        torch.cumsum(z.flatten(), 0)  # 1-D scan
        torch.tensor([1.0, 2.0]) * 3  # on the host
        z.nonzero()  # nonzero
        rows = torch.tensor([0, 1]).to(z.device)
        z.index_put_((rows,), torch.ones(4), accumulate=True)  # accumulate
    assert dict(census.sites) == _sites(
        [
            ("# elementwise", "mul", 1),
            ("# a transposing copy", "clone", 1),
            ("# a reduction", "sum", 1),
            ("# small sort", "arange", 1),
            ("# small sort", "sort", 2),
            ("# 1-D scan", "cumsum", 2),
            ("# nonzero", "nonzero", 4),
            ("# accumulate", "ones", 1),
            ("# accumulate", "index_put_", 7),
        ]
    )
    assert census.components == {"other": census.total()}


@pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1", reason="CPU tensors need the interpreter"
)
def test_triton_launches_are_counted_by_kernel_name():
    x = torch.zeros(100)

    def grid(meta):
        return (triton.cdiv(meta["n"], meta["BLOCK"]),)

    with LaunchCensus() as census:
        _add_one_kernel[(2,)](x, 100, BLOCK=64)  # a grid of two
        _add_one_kernel[(0,)](x, 0, BLOCK=64)
        _add_one_kernel[grid](x, 100, BLOCK=64)  # grid fn
    assert dict(census.sites) == _sites(
        [
            ("# a grid of two", "triton._add_one_kernel", 1),
            ("# grid fn", "triton._add_one_kernel", 1),
        ]
    )
    assert torch.equal(x, torch.full((100,), 2.0))  # the kernels ran


def test_collectives_are_one_kernel_each():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        t, out = torch.ones(4), torch.empty(4)
        with LaunchCensus() as census:
            dist.all_reduce(t)  # all_reduce
            dist.all_to_all_single(out, t)  # all_to_all
    finally:
        dist.destroy_process_group()
    assert dict(census.sites) == _sites(
        [("# all_reduce", "c10d.allreduce_", 1), ("# all_to_all", "c10d.alltoall_base_", 1)]
    )


def test_components_follow_the_stage_timer():
    timer, x = StageTimer(torch.device("cpu")), torch.ones(4)
    with LaunchCensus() as census:
        with timer.stage("lookup"):
            x + 1
            with timer.stage("output_dist"):
                x * 2, x * 3
        x - 1
    assert census.components == {"lookup": 1, "output_dist": 2, "other": 1}


def test_multi_tensor_apply_chunks():
    assert multi_tensor_launches([10] * 770, depth=1) == 1
    assert multi_tensor_launches([10] * 771, depth=1) == 2  # tensors full
    assert multi_tensor_launches([10] * 253, depth=4) == 2
    assert multi_tensor_launches([65536 * 2240 + 1], depth=2) == 2  # blocks full
    assert multi_tensor_launches([0, 0], depth=2) == 0


@pytest.mark.parametrize(
    "optimizer, launches",
    [
        # fused: the step counters on the device
        (torch.optim.Adam, {"_fused_adam_": 1, "_foreach_add_": 1}),
        (torch.optim.SGD, {"_foreach_add_": 1}),
        (  # step counters on the host: their add_ launches nothing
            torch.optim.Adagrad,
            {
                *{"_foreach_addcmul_": 1, "_foreach_sqrt": 1, "_foreach_add_": 2}.items(),
                *{"_foreach_mul": 1, "_foreach_addcdiv_": 1}.items(),
            },
        ),
    ],
)
def test_optimizers_launch_as_their_cuda_implementation(optimizer, launches):
    params = [torch.nn.Parameter(torch.ones(3, 4)), torch.nn.Parameter(torch.ones(4))]
    assert predict_cuda_optimizer(optimizer(params, lr=0.1)) == dict(launches)


def test_dense_network_is_predicted_compiled():
    """A models/ network's eager ops are set aside and replaced by its inductor graphs' launches."""
    mlp, x = MLP(8, [16, 4]), torch.randn(5, 8)
    with LaunchCensus() as census:
        mlp(x).sum().backward()  # the network, then a sum outside it
    assert set(by_file(census.set_aside["dense"])) == {
        f"{THIS} {op}" for op in ("addmm", "relu", "threshold_backward", "mm", "sum")
    }
    report = launch_report(census, steps=1)
    sites = report["launch_sites"]
    assert sites["<compiled dense forward> addmm"] == 2  # two Linear layers (cuBLAS)
    assert sites["<compiled dense backward> mm"] == 3  # two weight gradients, one input gradient
    for part in ("forward", "backward"):
        assert any(s.startswith(f"<compiled dense {part}> triton.") for s in sites), sites
    assert report["launch_method"]["dense"]["calls"] == {"forward": 1, "backward": 1}
    assert report["launch_method"]["dense"]["graph_breaks"] == 0
    assert {s: n for s, n in sites.items() if not s.startswith("<")} == _sites(
        [("# the network, then a sum outside it", op, 1) for op in ("sum", "ones_like")]
    )
    assert report["predicted_launches_per_step"] == sum(report["launch_components"].values())


def _check_profile(profile: dict, world_size: int) -> None:
    """The step's launches add up, component by component, and each kind is there."""
    total = profile["predicted_launches_per_step"]
    assert total == pytest.approx(sum(profile["launch_sites"].values()))
    assert total == pytest.approx(sum(profile["launch_components"].values()))
    sites = profile["launch_sites"]
    assert any(" triton._gather_pool_kernel" in s for s in sites)
    assert any(s.startswith("<compiled dense forward> ") for s in sites)
    assert any(s.startswith("<compiled dense backward> ") for s in sites)
    assert any(s.startswith(("<foreach ", "<fused ")) for s in sites)
    # compiled, not eager (DDP's collectives around the network run eagerly)
    assert not any(s.startswith("models/") and " c10d." not in s for s in sites)
    assert any(" c10d." in s for s in sites) == (world_size > 1)
    assert set(profile["launch_components"]) >= {"dense_fwd", "dense_bwd", "dense_optimizer"}
    # one graph (the network compiled without DDP): no eager ops left uncounted between graphs
    assert profile["launch_method"]["dense"]["graph_breaks"] == 0


@pytest.mark.slow
def test_single_rank_kaggle_step_launches_add_up():
    _check_profile(step_profile(1), 1)


@pytest.mark.slow
def test_two_rank_step_launches_add_up():
    _check_profile(step_profile(2), 2)


# today's predicted launches per step: a change that adds launches to the step fails here
TODAY = {1: 60, 2: 74}


@pytest.mark.slow
@pytest.mark.parametrize("world_size", [1, 2])
def test_step_launches_do_not_grow(world_size):
    assert step_profile(world_size)["predicted_launches_per_step"] <= TODAY[world_size]


@pytest.mark.slow
def test_single_rank_kaggle_step_launch_budget():
    """dense_fwd 18 (the compiled bf16 network with its loss: 8 GEMMs, 6 ReLUs (the last writes the
    interaction's input), the flat Linear buffer's cast, the pooled embeddings' cast into the interaction's
    input, the pairs' gather, the loss), dense_bwd 31 (15 GEMMs, the loss's backward with the last bias's
    gradient, 6 bias-gradient sums, 5 ReLU backwards, the pairs' gradient gather, the interaction input's
    gradient: pooled and dense parts, the flat buffer's float32 gradient), sparse_update 8 (the fused
    backward: sort, segment bookkeeping, 2 kernels), input_dist 1, output_dist 1, optimizer 1."""
    assert step_profile(1)["predicted_launches_per_step"] <= 60


@pytest.mark.slow
def test_two_rank_step_launch_budget():
    assert step_profile(2)["predicted_launches_per_step"] <= 90


# the embedding's launches per step at W = 2 by stage: the exchange path's kernels fused
EMBEDDING_STAGES = {
    "input_dist": 8,
    "lookup": 2,
    "output_dist": 2,
    "grad_dist": 13,
    "sparse_update": 8,
}


@pytest.mark.slow
def test_two_rank_embedding_stages_launch_budget():
    components = step_profile(2)["launch_components"]
    stages = {stage: components.get(stage, 0) for stage in STAGE_NAMES}
    assert all(stages[s] <= n for s, n in EMBEDDING_STAGES.items()), stages
    assert sum(stages.values()) <= 33, stages
