"""Dynamic tables at W = 1, 2 and 4 (gloo): the same keys admitted and evicted at the same steps, the same losses,
tables compared by key, and dense weights, to fp32 round-off. One spawn per world size, cases looped inside."""

import os

import pytest
import torch

import embedding.dynamic
from tests.support.configs import DYNAMIC_TOML
from tests.support.dist_utils import run_distributed
from tests.support.training import dense_state, host_batches, load_parts, train_losses

# sparse optimizer, pipelined
CASES = [("sgd", True), ("adagrad", False), ("adam", True), ("adagrad", True)]


def _train(rank, world_size, group, toml_path, cases, extra=(), device="cpu"):
    """_cases with expiry sweeping every N = 3 steps (E = 3: keys outlive E by 0 to 2 steps, the same at every
    W), the setting restored after: W = 1 may run in the test's own process."""
    slack = embedding.dynamic.EXPIRY_SLACK
    embedding.dynamic.EXPIRY_SLACK = 1
    try:
        return _cases(rank, world_size, group, toml_path, cases, extra, device)
    finally:
        embedding.dynamic.EXPIRY_SLACK = slack


def _cases(rank, world_size, group, toml_path, cases, extra, device):
    """Per case: losses, per-step dynamic keys and counters, final tables (dynamic: by key) and dense weights."""
    results = {}
    for optimizer, pipelined in cases:
        cfg, parts = load_parts(
            [
                "--config",
                toml_path,
                "--optimizer.sparse",
                optimizer,
                "--train.pipelined",
                str(pipelined),
                *extra,
            ],
            rank,
            world_size,
            group,
            device,
        )
        emb = parts.embeddings
        keys, counters = [], []

        def after_step(result, emb=emb, keys=keys, counters=counters):
            full = emb.full_state_dict()
            keys.append({t.name: full[t.name]["keys"].tolist() for t in emb.tables if t.dynamic})
            counters.append(emb.dynamic_metrics())

        # host-made batches: the device's synthetic stream may differ from the host's in the last ulp
        losses = train_losses(
            cfg,
            parts,
            world_size,
            batches=host_batches(cfg, rank, world_size),
            after_step=after_step,
        )
        results[(optimizer, pipelined)] = (
            list(losses.values()),
            keys,
            counters,
            emb.full_state_dict(),
            dense_state(parts),
        )
    return results


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    path = tmp_path_factory.mktemp("dyn_equiv") / "equiv.toml"
    path.write_text(DYNAMIC_TOML)
    return {w: run_distributed(_train, w, str(path), CASES) for w in (1, 2, 4)}


def test_the_case_exercises_admission_eviction_and_growth(runs):
    counters = runs[1][CASES[0]][2]
    users = [c["users"] for c in counters]
    items = [c["items"] for c in counters]
    # admission filter, expiry
    assert any(c["pending"] for c in users) and sum(c["evicted"] for c in users) > 0
    assert max(c["rows_allocated"] for c in users) > 8  # grew past its capacity
    # LRU at capacity
    assert sum(c["evicted"] for c in items) > 0 and max(c["live"] for c in items) == 48
    assert max(k for step in runs[1][CASES[0]][1] for k in step["users"]) > 2**32  # raw 63-bit keys


@pytest.mark.parametrize("world_size", [2, 4])
@pytest.mark.parametrize(
    "case", CASES, ids=[f"{o}-{'pipelined' if p else 'plain'}" for o, p in CASES]
)
def test_same_keys_losses_and_tables(runs, case, world_size):
    ref_losses, ref_keys, ref_counters, ref_tables, ref_dense = runs[1][case]
    losses, keys, counters, tables, dense = runs[world_size][case]
    assert keys == ref_keys  # the same keys hold rows after every step

    # rows_allocated is memory: each rank grows its own pool, so it depends on W
    def logical(steps):
        return [
            {t: {k: v for k, v in c.items() if k != "rows_allocated"} for t, c in step.items()}
            for step in steps
        ]

    # live, pending, admitted, evicted after every step
    assert logical(counters) == logical(ref_counters)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses), rtol=1e-5, atol=1e-6)
    for name, ref_state in ref_tables.items():
        for key, ref in ref_state.items():
            torch.testing.assert_close(
                tables[name][key], ref, rtol=1e-5, atol=1e-5, msg=f"table {name} {key}"
            )
    for key, ref in ref_dense.items():
        torch.testing.assert_close(dense[key], ref, rtol=1e-5, atol=1e-5, msg=f"dense {key}")
    assert ref_losses[0] != ref_losses[-1]


def test_pipelined_equals_not_pipelined(runs):
    """input_dist one batch ahead (before the previous step's admissions and updates) changes nothing."""
    piped, plain = runs[2][("adagrad", True)], runs[2][("adagrad", False)]
    # identical losses and keys, not merely close
    assert plain[0] == piped[0] and plain[1] == piped[1]
    for name, state in plain[3].items():
        for key, value in state.items():
            assert torch.equal(value, piped[3][name][key]), f"{name} {key}"


@pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1",
    reason="forces Triton on CPU tensors, which only the interpreter runs",
)
def test_triton_path_matches_reference_path(runs, tmp_path, monkeypatch):
    """The whole W = 2 step with every kernel on Triton (find_or_insert, unique_partition, pooling, updates), as on
    a GPU: the same keys, losses and tables as the torch reference path."""
    pytest.importorskip("triton")
    path = tmp_path / "equiv.toml"
    path.write_text(DYNAMIC_TOML.replace("steps = 8", "steps = 3"))
    monkeypatch.setenv("RECFUSE_FORCE_TRITON", "1")
    case = ("adam", True)
    losses, keys, counters, tables, _ = run_distributed(_train, 2, str(path), [case])[case]
    ref_losses, ref_keys, _, _, _ = runs[2][case]
    assert keys == ref_keys[:3]
    torch.testing.assert_close(
        torch.tensor(losses), torch.tensor(ref_losses[:3]), rtol=1e-5, atol=1e-6
    )
    monkeypatch.delenv("RECFUSE_FORCE_TRITON")
    ref_tables = run_distributed(_train, 2, str(path), [case])[case][3]
    for name, ref_state in ref_tables.items():
        for key, ref in ref_state.items():
            torch.testing.assert_close(
                tables[name][key], ref, rtol=1e-5, atol=1e-5, msg=f"table {name} {key}"
            )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_two_ranks_on_one_gpu_match_the_cpu_reference(runs, tmp_path):
    """W = 2 (gloo, both ranks on cuda:0: compiled find_or_insert and the other Triton kernels) against W = 1 on the
    CPU reference: the same keys at every step, losses and tables to round-off."""
    path = tmp_path / "equiv.toml"
    path.write_text(DYNAMIC_TOML)
    cases = [("adagrad", True), ("adam", True)]
    gpu = run_distributed(_train, 2, str(path), cases, (), "cuda")
    for case in cases:
        losses, keys, _, tables, _ = gpu[case]
        ref_losses, ref_keys, _, ref_tables, _ = runs[1][case]
        assert keys == ref_keys
        torch.testing.assert_close(
            torch.tensor(losses), torch.tensor(ref_losses), rtol=1e-4, atol=1e-5
        )
        for name, ref_state in ref_tables.items():
            for key, ref in ref_state.items():
                torch.testing.assert_close(
                    tables[name][key], ref, rtol=1e-4, atol=1e-4, msg=f"{case} {name} {key}"
                )
