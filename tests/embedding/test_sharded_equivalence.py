"""The backbone test: W = 1, 2 and 4 ranks train the same function (losses, weights, states)."""

import os

import pytest
import torch

from pipeline.batch import KeyedJagged
from tests.support.configs import SHARDED_TOML
from tests.support.dist_utils import run_distributed
from tests.support.training import train_cases

CASES = [
    (placement, opt)
    for placement in ("table", "row", "replicated", "auto")
    for opt in ("sgd", "adagrad", "adam")
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    path = tmp_path_factory.mktemp("equiv") / "equiv.toml"
    path.write_text(SHARDED_TOML)
    return {w: run_distributed(train_cases, w, str(path), CASES) for w in (1, 2, 4)}


def test_auto_plan_mixes_placements(runs):
    plan = runs[2][("auto", "sgd")][3]
    assert plan == {
        "big": "table",
        "shared": "table",
        "small": "replicated",
        "pinned": "row",
        "odd": "replicated",
    }
    # at W = 4 big and shared each exceed an even share of the sharded bytes, so they go row-wise
    plan = runs[4][("auto", "sgd")][3]
    assert plan == {
        "big": "row",
        "shared": "row",
        "small": "replicated",
        "pinned": "row",
        "odd": "replicated",
    }


@pytest.mark.parametrize("world_size", [2, 4])
@pytest.mark.parametrize("case", CASES, ids=[f"{p}-{o}" for p, o in CASES])
def test_same_losses_weights_and_states(runs, case, world_size):
    ref_losses, ref_tables, ref_dense, _ = runs[1][case]
    losses, tables, dense, plan = runs[world_size][case]
    if case[0] != "auto":
        assert {p for name, p in plan.items() if name != "pinned"} == {case[0]} and plan[
            "pinned"
        ] == "row"
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses), rtol=1e-5, atol=1e-6)
    for name, ref_state in ref_tables.items():
        for key, ref in ref_state.items():
            torch.testing.assert_close(
                tables[name][key], ref, rtol=1e-5, atol=1e-5, msg=f"table {name} {key}"
            )
    for key, ref in ref_dense.items():
        torch.testing.assert_close(dense[key], ref, rtol=1e-5, atol=1e-5, msg=f"dense {key}")
    assert ref_losses[0] != ref_losses[-1]  # training moved


def _exchange_counts(rank, world_size, group):
    """Rank r looks up ids with known duplicates; report what travelled."""
    from embedding import ShardedEmbeddingCollection, SparseOptimizer, Table, plan_sharding

    tables = [Table("t0", 10, 2, "sum", ("t0",)), Table("t1", 10, 2, "sum", ("t1",))]
    plan = plan_sharding(tables, world_size, default_placement="row")
    ec = ShardedEmbeddingCollection(
        tables, plan, SparseOptimizer("sgd", 0.1), rank=rank, world_size=world_size, group=group
    )
    # 12 ids, 4 distinct keys per rank: t0 {1, 2}, t1 {1, 4}; rank 1 shifts t0's ids by 1 -> {2, 3}
    shift = rank
    kjt = KeyedJagged.from_lists(
        {
            "t0": [[1 + shift, 1 + shift, 2 + shift], [1 + shift, 2 + shift, 2 + shift]],
            "t1": [[1, 1, 4], [4, 4, 1]],
        }
    )
    sd = ec.input_dist(kjt).wait()
    ec(sd).sum().backward()
    return {
        "send": sd.send_splits,
        "recv": sd.recv_splits,
        "keys": sd.unique_keys.tolist(),
        "bytes": ec.last_exchange_bytes,
        "dim": ec.dim,
    }


def test_only_unique_keys_travel():
    out = run_distributed(_exchange_counts, 2)
    # rank 0 keys: t0 rows {1, 2} -> owners {1, 0}; t1 rows {1, 4} (keys 11, 14) -> owners {1, 0}
    assert sorted(out["keys"]) == [1, 2, 11, 14]
    assert out["send"] == [2, 2]  # 4 unique keys of 12 ids, 2 per owner
    # rank 0 receives its own 2 and rank 1's keys owned by 0: t0 {2} and t1 {4} -> 2
    assert out["recv"] == [2, 2]
    # off-rank traffic: counts (8 B), 2 keys (8 B each), 2 rows served (4 B x dim) + 2 gradients with their
    # lookup count (4 B x (dim + 1))
    assert out["bytes"] == 8 + 2 * 8 + 4 * out["dim"] * 2 + 4 * (out["dim"] + 1) * 2


@pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1",
    reason="forces Triton on CPU tensors, which only the interpreter runs; with a GPU "
    "test_two_ranks_on_one_gpu_match_one_rank covers the compiled Triton path",
)
def test_triton_path_matches_reference_path(runs, tmp_path, monkeypatch):
    """The whole sharded step with every kernel on Triton (interpreter on CPU) at W=2."""
    pytest.importorskip("triton")
    path = tmp_path / "equiv.toml"
    path.write_text(SHARDED_TOML.replace("steps = 4", "steps = 2"))
    monkeypatch.setenv("RECFUSE_FORCE_TRITON", "1")
    case = ("auto", "adam")
    losses, tables, dense, _ = run_distributed(train_cases, 2, str(path), [case])[case]
    # the W > 1 backward has no atomics: a second run gives the same bits
    again, again_tables, _, _ = run_distributed(train_cases, 2, str(path), [case])[case]
    assert again == losses
    for name, state in tables.items():
        for key, value in state.items():
            assert torch.equal(value, again_tables[name][key]), f"{name} {key}"
    ref_losses, _, _, _ = runs[1][case]
    torch.testing.assert_close(
        torch.tensor(losses), torch.tensor(ref_losses[:2]), rtol=1e-5, atol=1e-6
    )
    monkeypatch.delenv("RECFUSE_FORCE_TRITON")
    ref_losses2, ref_tables, ref_dense, _ = run_distributed(train_cases, 1, str(path), [case])[case]
    for name, ref_state in ref_tables.items():
        for key, ref in ref_state.items():
            torch.testing.assert_close(
                tables[name][key], ref, rtol=1e-5, atol=1e-5, msg=f"table {name} {key}"
            )


def test_pipelined_equals_not_pipelined(runs, tmp_path):
    path = tmp_path / "equiv.toml"
    path.write_text(SHARDED_TOML)
    case = ("auto", "adagrad")
    plain = run_distributed(train_cases, 2, str(path), [case], False)[case]
    piped = runs[2][case]  # adagrad cases run pipelined
    assert plain[0] == piped[0]  # identical losses, not merely close
    for name, state in plain[1].items():
        for key, value in state.items():
            assert torch.equal(value, piped[1][name][key]), f"{name} {key}"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_two_rank_gpu_backward_is_deterministic(tmp_path):
    """Compiled kernels, W = 2 on one GPU, twice: the same bits (no float atomics in the backward)."""
    path = tmp_path / "equiv.toml"
    path.write_text(SHARDED_TOML)
    cases = [("auto", "adagrad"), ("row", "adam")]
    first, second = (run_distributed(train_cases, 2, str(path), cases, None, "cuda") for _ in "ab")
    for case in cases:
        assert first[case][0] == second[case][0], case
        for name, state in first[case][1].items():
            for key, value in state.items():
                assert torch.equal(value, second[case][1][name][key]), f"{case} {name} {key}"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_two_ranks_on_one_gpu_match_one_rank(runs, tmp_path):
    """W=2 (gloo, both ranks on cuda:0) against W=1 on the same GPU: the multi-rank GPU path (owners, exchange,
    compiled Triton kernels with W > 1) on any one-GPU machine. Also against the CPU W=1 reference."""
    path = tmp_path / "equiv.toml"
    path.write_text(SHARDED_TOML)
    cases = [("auto", "adagrad"), ("row", "adam"), ("table", "sgd")]
    one = run_distributed(train_cases, 1, str(path), cases, None, "cuda")
    two = run_distributed(train_cases, 2, str(path), cases, None, "cuda")
    for case in cases:
        for got in (two[case], runs[1][case]):
            torch.testing.assert_close(
                torch.tensor(got[0]), torch.tensor(one[case][0]), rtol=1e-5, atol=1e-6
            )
            for name, ref_state in one[case][1].items():
                for key, ref in ref_state.items():
                    torch.testing.assert_close(
                        got[1][name][key], ref, rtol=1e-5, atol=1e-5, msg=f"{case} {name} {key}"
                    )
            for key, ref in one[case][2].items():
                torch.testing.assert_close(
                    got[2][key], ref, rtol=1e-5, atol=1e-5, msg=f"{case} dense {key}"
                )
