"""embedding.exchange_dtype: rows and gradients cross the all-to-all in 16 bits; training stays close to fp32."""

from types import SimpleNamespace

import pytest
import torch

from embedding import ShardedEmbeddingCollection, SparseOptimizer, Table, plan_sharding
from embedding.comm import Exchange
from pipeline.batch import KeyedJagged
from tests.support.configs import SHARDED_TOML as TOML
from tests.support.dist_utils import run_distributed
from tests.support.training import train_cases


def _send_gradients(rank, world_size, group, dtype):
    """Rank r sends rank d a message of magnitude 10^-(3 d + r) (fp16's smallest normal is 6e-5)."""
    gen = torch.Generator().manual_seed(rank)
    splits = [3, 2]
    grads = torch.cat(
        [torch.randn(n, 5, generator=gen) * 10.0 ** -(3 * d + rank) for d, n in enumerate(splits)]
    )
    ex = Exchange(group, rank, world_size, dtype)
    send_counts = torch.tensor(splits)
    recv_counts = ex.all_to_all(send_counts, [1, 1], [1, 1])
    counts = recv_counts.tolist()
    message = ex.gradient_message(grads.shape[0], grads.shape[1], grads.device)
    message.grads.copy_(grads)
    message.lookups.copy_(torch.arange(grads.shape[0]) + 10 * rank)  # travel beside, exactly
    sd = SimpleNamespace(
        send_splits=splits, recv_splits=counts, send_counts=send_counts, recv_counts=recv_counts
    )
    received, lookups = ex.gradients(message, sd)
    # rank 0 gets both ranks' first 3 rows, rank 1 their last 2
    assert lookups.tolist() == ([0, 1, 2, 10, 11, 12] if rank == 0 else [3, 4, 13, 14])
    return grads, received, counts


def _send_gradients_all(rank, world_size, group):
    return {d: _send_gradients(rank, world_size, group, d) for d in ("fp16", "bf16")}


@pytest.fixture(scope="module")
def sent_gradients():
    return run_distributed(_send_gradients_all, 2)


@pytest.mark.parametrize("dtype,rtol", [("fp16", 1e-3), ("bf16", 8e-3)])
def test_small_gradients_survive_16_bit_exchange(sent_gradients, dtype, rtol):
    sent, received, counts = sent_gradients[dtype]
    assert received.dtype == torch.float32 and counts == [3, 3]
    # rank 0 received its own first 3 rows (10^0 scale) then rank 1's first 3 rows (10^-1 scale)
    own = sent[:3]
    torch.testing.assert_close(received[:3], own, rtol=rtol, atol=0)
    assert bool((received[3:] != 0).all())  # rank 1's rows: no flush to zero


def _bytes(rank, world_size, group, dtype):
    tables = [Table("t0", 10, 8, "sum", ("t0",)), Table("t1", 10, 8, "sum", ("t1",))]
    plan = plan_sharding(tables, world_size, default_placement="row")
    ec = ShardedEmbeddingCollection(
        tables,
        plan,
        SparseOptimizer("sgd", 0.1),
        rank=rank,
        world_size=world_size,
        group=group,
        exchange_dtype=dtype,
    )
    kjt = KeyedJagged.from_lists({"t0": [[1 + rank, 2], [3]], "t1": [[1, 4], [4]]})
    sd = ec.input_dist(kjt)
    ec(sd).sum().backward()
    return ec.last_exchange_bytes, sd.send_splits[1 - rank], sd.recv_splits[1 - rank]


def _bytes_all(rank, world_size, group):
    return [_bytes(rank, world_size, group, d) for d in ("fp32", "bf16", "fp16")]


def test_bytes_on_the_wire_halve():
    (fp32, keys_out, rows_out), (bf16, _, _), (fp16, _, _) = run_distributed(_bytes_all, 2)
    # rank 0 sends its peer: the split count (8 B), 3 keys (8 B each) and their lookup counts (4 B each), then
    # rows and gradients, 8 columns each: 4 B per element in fp32, 2 B in bf16/fp16
    assert keys_out == 3 and rows_out == 2
    fixed = 8 + 3 * (8 + 4)
    assert (fp32, bf16) == (
        fixed + 4 * 8 * (rows_out + keys_out),
        fixed + 2 * 8 * (rows_out + keys_out),
    )
    assert fp16 == bf16 + 4  # the per-message scale


CASES = [("auto", "adagrad"), ("row", "adam")]
DTYPES = ("fp32", "bf16", "fp16")


def _train_dtypes(rank, world_size, group, paths):
    return {d: train_cases(rank, world_size, group, paths[d], CASES) for d in DTYPES}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    paths = {}
    for dtype in DTYPES:
        paths[dtype] = str(tmp_path_factory.mktemp(dtype) / "cfg.toml")
        with open(paths[dtype], "w") as f:
            f.write(
                TOML.replace("[embedding]\n", f'[embedding]\nexchange_dtype = "{dtype}"\n').replace(
                    "steps = 4", "steps = 8"
                )
            )
    by_world = {w: run_distributed(_train_dtypes, w, paths) for w in (1, 2)}
    return {d: {w: by_world[w][d] for w in (1, 2)} for d in DTYPES}


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_training_stays_within_one_percent_of_fp32(trained, dtype):
    for case, (losses, *_rest) in trained[dtype][2].items():
        ref = trained["fp32"][2][case][0]
        for got, want in zip(losses, ref, strict=True):
            assert abs(got - want) <= 0.01 * abs(want), (case, losses, ref)
        assert losses != ref  # the rows did travel in 16 bits


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_one_rank_is_unaffected(trained, dtype):
    for case, (losses, tables, dense, _) in trained[dtype][1].items():
        ref_losses, ref_tables, ref_dense, _ = trained["fp32"][1][case]
        assert losses == ref_losses
        assert all(torch.equal(dense[k], ref_dense[k]) for k in dense)
        assert all(torch.equal(tables[t][k], ref_tables[t][k]) for t in tables for k in tables[t])
