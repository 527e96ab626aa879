"""Device->host syncs of the training step, predicted on CPU (training.census.HostSyncCensus), and counted on a
GPU where there is one.

A GPU step that waits for the device is host-bound. The budget, on the Triton path, on steps that do not log:
no sync at W = 1 (Kaggle shape), one at W = 2 (tiny.toml: the split sizes of the id exchange). On a GPU
run.profile_steps counts the runtime's syncs; on CPU the census lists the calls that would sync there, per
line, so a change that adds one fails here, on any machine (the exact-sites tests).
"""

import threading
import warnings

import numpy as np
import pytest
import torch

from tests.support.step_profiles import by_file, step_profile
from training.census import HostSyncCensus

THIS = "tests/training/test_host_syncs.py"
# today's sites (file, op) and syncs per step: what the exact-sites tests hold the step to
KAGGLE_W1_SITES: dict = {}  # none: the id check is read at log steps, the fused backward's rows bounded
TINY_W2_SITES = {
    "embedding/sharded.py tolist": 1.0,  # the split sizes of the batch's all-to-alls, both ways at once
}


def _line_of(text: str) -> int:
    return next(i for i, line in enumerate(open(__file__), start=1) if text in line)


def _sites(marks: list[tuple[str, str, int]]) -> dict:
    return {f"{THIS}:{_line_of(marker)} {op}": n for marker, op, n in marks}


class _Doubler(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, grad):
        torch.unique(grad)  # backward sync
        grad.tolist()  # backward host copy
        return grad * 2


def test_census_counts_each_kind_of_sync_at_its_line():
    t = torch.tensor([3, 0, 2])
    x = torch.ones(3, requires_grad=True)
    with HostSyncCensus() as census:
        t.tolist()  # host copy
        bool(t.any())  # scalar read
        t[t > 0]  # boolean mask
        t.nonzero()  # nonzero
        torch.repeat_interleave(torch.arange(3), t)  # sized by values
        torch.repeat_interleave(torch.arange(3), t, output_size=5)
        t.cumsum(0)
        t.to(torch.float32)
        _Doubler.apply(x).sum().backward()
    assert dict(census.sites) == _sites(
        [
            ("# host copy", "tolist", 1),
            ("# scalar read", "_local_scalar_dense", 1),
            ("# boolean mask", "index", 1),
            ("# nonzero", "nonzero", 1),
            ("# sized by values", "repeat_interleave", 1),
            ("# backward sync", "_unique2", 1),
            ("# backward host copy", "tolist", 1),
        ]
    )


def test_census_counts_host_to_device_copies():
    x = torch.ones(4)
    with HostSyncCensus() as census:
        torch.tensor([1, 2], device=x.device)  # from a list
        torch.tensor(5, device=x.device)  # from a scalar
        torch.as_tensor(np.ones(2), device=x.device)  # from numpy
        x.new_tensor([1.0])  # new_tensor
        host = torch.tensor([1.0, 2.0, 3.0, 4.0])  # a host tensor: no copy yet
        x.copy_(host)  # copy into a device tensor
        host.to(x.device)  # to the device
        torch.tensor(3).item()  # all on the host: no sync
        torch.from_numpy(np.zeros(4, dtype=np.float32)).copy_(x)  # copy to the host
        x.to("cpu", non_blocking=True)  # into pinned memory: no wait here
    assert dict(census.sites) == _sites(
        [
            ("# from a list", "tensor(h2d)", 1),
            ("# from a scalar", "tensor(h2d)", 1),
            ("# from numpy", "as_tensor(h2d)", 1),
            ("# new_tensor", "new_tensor(h2d)", 1),
            ("# copy into a device tensor", "copy_(h2d)", 1),
            ("# to the device", "to(h2d)", 1),
            ("# copy to the host", "copy_(d2h)", 1),
        ]
    )


def test_census_weighs_ops_by_their_cuda_syncs():
    x, p = torch.tensor([0.5, 1.5, 2.5]), torch.tensor([0.2, 0.8])
    with HostSyncCensus() as census:
        torch.bincount(torch.tensor([1, 2]).to(x.device))  # bincount: min and max
        torch.histc(x)  # histc without a range
        torch.histc(x, min=0, max=3)
        torch.multinomial(p, 1)  # multinomial checks
        torch.multinomial(p, 2, replacement=True)
        x.masked_fill(x > 1, x.sum())  # a device value
        x.masked_fill(x > 1, torch.tensor(0.0))
        torch.where(x > 1)  # where with one argument
        torch.equal(x, x)  # equal
        torch.allclose(x, x)  # allclose
        torch.nonzero_static(x, size=2)
        torch.searchsorted(x, x)
        x.masked_scatter(x > 1, x)
        x.to("cpu")  # device to host
    assert dict(census.sites) == _sites(
        [
            ("# bincount: min and max", "to(h2d)", 1),
            ("# bincount: min and max", "bincount", 2),
            ("# histc without a range", "histc", 2),
            ("# multinomial checks", "multinomial", 2),
            ("# a device value", "masked_fill", 1),
            ("# where with one argument", "nonzero", 1),
            ("# equal", "equal", 1),
            ("# allclose", "allclose", 1),
            ("# device to host", "to", 1),
        ]
    )


def test_optimizer_step_counters_live_on_the_host():
    w = torch.nn.Parameter(torch.ones(4))
    optimizer = torch.optim.Adagrad([w], lr=0.1)
    w.sum().backward()
    with HostSyncCensus() as census:
        optimizer.step()  # reads its step counter with .item(): a host tensor, also in a CUDA run
    assert not census.sites


def test_other_threads_are_not_counted():
    t = torch.tensor([1, 2])
    with HostSyncCensus() as census:
        worker = threading.Thread(target=lambda: (t.tolist(), t.sum().item()))
        worker.start()
        worker.join()
    assert not census.sites


@pytest.mark.slow
def test_single_rank_kaggle_step_sync_sites():
    """W=1, Kaggle shape: exactly today's syncs (a new one fails here)."""
    profile = step_profile(1)
    assert profile["steps"] == 2
    assert by_file(profile["sync_sites"]) == KAGGLE_W1_SITES, profile["sync_sites"]
    assert profile["predicted_syncs_per_step"] == sum(KAGGLE_W1_SITES.values())


@pytest.mark.slow
def test_two_rank_step_sync_sites():
    """W=2, tiny.toml: exactly today's syncs."""
    profile = step_profile(2)
    assert by_file(profile["sync_sites"]) == TINY_W2_SITES, profile["sync_sites"]
    assert profile["predicted_syncs_per_step"] == sum(TINY_W2_SITES.values())


@pytest.mark.slow
def test_single_rank_kaggle_step_makes_no_sync():
    assert step_profile(1)["predicted_syncs_per_step"] == 0


@pytest.mark.slow
def test_two_rank_step_makes_one_sync():
    assert step_profile(2)["predicted_syncs_per_step"] == 1


# ---- on a GPU: the syncs themselves (torch.cuda.set_sync_debug_mode) --------------------------------------
def _gpu_kaggle_steps(tmp_path, mode: str, warmup: int = 2, measured: int = 2) -> list[int]:
    """Train the Kaggle shape on the GPU as train.py does (LossGuard included), the measured steps (after
    warm-up, before the last; none of them logs) under set_sync_debug_mode(mode). Returns the training thread's
    sync warnings per measured step (the prefetch thread's syncs only wait for its own side stream)."""
    from tests.support.training import context, load_parts
    from training.guards import LossGuard
    from training.loop import train_loop

    argv = ["--config", "configs/dlrm_criteo_kaggle.toml", "--embedding.row_scale", "0.00002"]
    argv += ["--train.global_batch_size", "16", "--train.steps", str(warmup + measured + 1)]
    argv += ["--run.dir", str(tmp_path), "--run.device", "cuda", "--eval.every", "0"]
    cfg, parts = load_parts(argv, device="cuda")
    guard = LossGuard(cfg, context(device="cuda"), lambda: None)
    main, per_step, syncs = threading.get_ident(), [], []

    def record(message, *args, **kwargs):
        if threading.get_ident() == main and "synchroniz" in str(message):
            syncs.append(message)

    steps = iter(train_loop(cfg, parts, 0, None, guard.before_backward))

    def step() -> None:
        result = next(steps)
        guard.step_done(result.step, result.loss)

    for _ in range(warmup):
        step()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode(mode)
        try:
            for _ in range(measured):
                syncs.clear()
                step()
                per_step.append(len(syncs))
        finally:
            torch.cuda.set_sync_debug_mode(0)
    for _ in steps:
        pass
    return per_step


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_step_syncs_as_the_census_predicts(tmp_path):
    """The census's W=1 count (today's exact sites) is what a GPU's sync debug mode sees."""
    per_step = _gpu_kaggle_steps(tmp_path, "warn")
    assert per_step and all(n == sum(KAGGLE_W1_SITES.values()) for n in per_step), per_step


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_step_runs_without_a_sync(tmp_path):
    """Under set_sync_debug_mode("error") any sync in the step raises."""
    assert _gpu_kaggle_steps(tmp_path, "error") == [0, 0]
