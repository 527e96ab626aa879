"""weights_digest: computed shard by shard on the device, never gathered, and still the same value at
every world size and under every plan."""

import pytest
import torch

from embedding import ShardedEmbeddingCollection, SparseOptimizer, Table, plan_sharding
from kernels.hashing import splitmix64
from tests.support.dist_utils import run_distributed

TABLES = [
    Table("big", 37, 6, "sum", ("big",)),
    Table("small", 5, 6, "sum", ("small",)),
    Table("odd", 11, 6, "mean", ("odd",)),
]
MASK64 = (1 << 64) - 1


def reference_digest(t: int, weight: torch.Tensor) -> int:
    """The same definition written out on the host over a table's full weights (rows in global order)."""
    from embedding.state import DIGEST_K1, DIGEST_K2

    key = int(splitmix64(torch.tensor([t + 0x5EED], dtype=torch.int64))[0])
    bits = weight.float().contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    positions = torch.arange(weight.numel(), dtype=torch.int64).view(weight.shape)
    h = splitmix64(positions * DIGEST_K1 ^ bits * DIGEST_K2 ^ key)
    return sum(int(x) & MASK64 for x in h.flatten()) & MASK64


def _digests(rank, world_size, group, placement, chunk_elems, storage_dtype="float32"):
    plan = plan_sharding(TABLES, world_size, default_placement=placement, replicate_below_bytes=0)
    ec = ShardedEmbeddingCollection(
        TABLES,
        plan,
        SparseOptimizer("adagrad", 0.1),
        rank=rank,
        world_size=world_size,
        group=group,
        seed=3,
        storage_dtype=storage_dtype,
    )
    full = ec.full_state_dict()
    return ec.table_digests(chunk_elems), [
        reference_digest(t, full[x.name]["weight"]) for t, x in enumerate(TABLES)
    ]


def _digests_per_placement(rank, world_size, group):
    # 7: chunks split rows
    return {p: _digests(rank, world_size, group, p, 7) for p in ("table", "row", "replicated")}


@pytest.fixture(scope="module")
def digests():
    return {w: run_distributed(_digests_per_placement, w) for w in (1, 2, 4)}


@pytest.mark.parametrize("placement", ["table", "row", "replicated"])
@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_digest_is_independent_of_world_size_plan_and_chunking(digests, placement, world_size):
    got, reference = digests[world_size][placement]
    single, _ = _digests(0, 1, None, "table", 1 << 22)
    assert got == reference == single


@pytest.mark.parametrize("storage_dtype", ["bfloat16", "float16"])
def test_digest_of_low_precision_storage_hashes_its_float32_values(storage_dtype):
    digests, reference = _digests(0, 1, None, "table", 1 << 22, storage_dtype)
    assert digests == reference


def test_any_single_value_change_changes_the_digest():
    plan = plan_sharding(TABLES, 1, default_placement="table")
    ec = ShardedEmbeddingCollection(TABLES, plan, SparseOptimizer("sgd", 0.1), seed=3)
    before = ec.table_digests()
    for row, col in ((0, 0), (36, 5), (40, 2)):  # first, last row of "big", a row of "small"
        old = ec.weight[row, col].clone()
        ec.weight[row, col] = torch.nextafter(old, torch.tensor(1.0))  # one ulp
        after = ec.table_digests()
        changed = [a != b for a, b in zip(before, after, strict=True)]
        assert changed == [row < 37, row >= 37, False]
        ec.weight[row, col] = old
    # moving a value to another position is a change too
    ec.weight[[1, 2]] = ec.weight[[2, 1]]
    assert ec.table_digests()[0] != before[0]
