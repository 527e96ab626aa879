"""unique_partition_triton against unique_partition_reference: hash and direct-map paths, owners, probing."""

import gc
import os

import torch
from torch.utils.weak import WeakTensorKeyDictionary

# torch does not import triton, so this still precedes triton's import when this file runs alone
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from kernels.common_triton import INTERPRETED  # noqa: E402
from kernels.unique_partition import unique_partition_reference  # noqa: E402
from kernels.unique_partition_triton import unique_partition_triton  # noqa: E402
from tests.support.kernels import HAS_CUDA, check_unique_partition, needs_triton, on  # noqa: E402
from training.profiling import HostSyncCensus  # noqa: E402

WORLD_SIZES = (1, 2, 3, 4, 8)


def make_keys(pattern: str, n: int, gen: torch.Generator):
    """Keys over three tables: table-wise (owner 1 or 0), row-wise, and a huge row-wise table."""
    offsets = torch.tensor([0, 10, 50, 2**40], dtype=torch.int64)
    if pattern == "all_duplicates":
        keys = torch.full((n,), 37, dtype=torch.int64)
    elif pattern == "all_distinct":
        keys = torch.randperm(max(n, 60), generator=gen)[:n].to(torch.int64)
    elif pattern == "random":
        keys = torch.randint(0, 60, (n,), generator=gen, dtype=torch.int64)
    elif pattern == "big":  # > 2^32: the hash and slots must be 64-bit clean
        base = torch.randint(2**33, 2**33 + 40, (n,), generator=gen, dtype=torch.int64)
        keys = torch.where(torch.rand(n, generator=gen) < 0.3, base % 50, base)
    else:
        raise AssertionError(pattern)
    return keys, offsets


@needs_triton
@pytest.mark.parametrize("world_size", WORLD_SIZES)
@pytest.mark.parametrize("n", [0, 1, 7, 300, 2500])  # 2500: several blocks of positions
@pytest.mark.parametrize(
    "path,pattern",
    [("direct", p) for p in ("all_duplicates", "all_distinct", "random")]
    + [("hash", p) for p in ("all_duplicates", "all_distinct", "random", "big")],
)
def test_unique_partition(path, pattern, n, world_size):
    gen = torch.Generator().manual_seed(n * 31 + world_size)
    keys, offsets = make_keys(pattern, n, gen)
    owners = torch.tensor([min(1, world_size - 1), -1, -1], dtype=torch.int64)
    key_space = max(60, n) if path == "direct" else None  # keys < max(60, n) but for "big"
    result = unique_partition_triton(*on(keys, offsets, owners), world_size, key_space=key_space)
    check_unique_partition(keys, offsets, owners, world_size, result)


@needs_triton
def test_unique_partition_probe_overflow_falls_back():
    # one probing round cannot place colliding keys: the launcher must rerun unbounded
    gen = torch.Generator().manual_seed(0)
    keys = torch.randint(0, 2**40, (400,), generator=gen, dtype=torch.int64)
    keys = torch.cat([keys, keys[:100]])
    offsets = torch.tensor([0, 2**20, 2**41], dtype=torch.int64)
    owners = torch.tensor([2, -1], dtype=torch.int64)
    result = unique_partition_triton(*on(keys, offsets, owners), 3, max_probes=1)
    check_unique_partition(keys, offsets, owners, 3, result)


STRUCTURED = {
    "shifted_40": lambda i: i << 40,  # ids with their low 40 bits zero
    "shifted_50": lambda i: i << 50,
    "shifted_20_tagged": lambda i: (i << 20) | 7,
    "multiples_of_4096": lambda i: i * 4096,
    "top_bits": lambda i: (i << 51) | (i & 1),
}


@needs_triton
@pytest.mark.parametrize("pattern", sorted(STRUCTURED))
def test_structured_ids_fit_the_bounded_first_pass(pattern):
    """4096 structured ids (each twice, shuffled) into 16384 slots: the first pass places every key within the
    default probe bound (no overflow flag, so the rerun does nothing), and the outputs equal the reference."""
    import kernels.unique_partition_triton as up

    ids = STRUCTURED[pattern](torch.arange(4096, dtype=torch.int64))
    keys = torch.cat([ids, ids[torch.randperm(4096, generator=torch.Generator().manual_seed(3))]])
    n = keys.numel()
    capacity = 2 * n
    slot_keys, slot_pos = on(torch.full((capacity,), -1), torch.full((capacity,), n).int())
    slot_of, overflow = on(torch.empty(n, dtype=torch.int32), torch.zeros(1, dtype=torch.int32))
    up._insert_hash_kernel[(n // up.BLOCK,)](
        on(keys),
        n,
        slot_keys,
        capacity - 1,
        slot_pos,
        slot_of,
        overflow,
        64,
        RERUN=0,
        BLOCK=up.BLOCK,
    )
    assert int(overflow[0]) == 0, f"{pattern}: some key found no slot within 64 probes"
    assert int((slot_keys >= 0).sum()) == 4096  # each id once
    offsets = torch.tensor([0, 2**63 - 1], dtype=torch.int64)
    owners = torch.tensor([-1], dtype=torch.int64)
    result = unique_partition_triton(*on(keys, offsets, owners), 2)
    check_unique_partition(keys, offsets, owners, 2, result)


@needs_triton
def test_unique_partition_direct_map_ignores_earlier_calls(monkeypatch):
    """The persistent map is never cleared: each call's smaller tag must beat what earlier calls left,
    also when the key space grows and when the tags run out (the map is refilled)."""
    import kernels.unique_partition_triton as up

    monkeypatch.setattr(up, "_DIRECT_MAPS", WeakTensorKeyDictionary())
    offsets, owners = on(torch.tensor([0, 40, 100]), torch.tensor([0, -1]))
    gen = torch.Generator().manual_seed(5)
    for call in range(6):
        if call == 3:  # the next call's tag would be the last: the map must be refilled first
            next(iter(up._DIRECT_MAPS[offsets].values())).tag = 2
        space = 60 if call < 4 else 100
        keys = torch.randint(0, space, (50 + call,), generator=gen, dtype=torch.int64)
        check_unique_partition(
            keys,
            offsets.cpu(),
            owners.cpu(),
            2,
            unique_partition_triton(on(keys), offsets, owners, 2, key_space=space),
        )


@needs_triton
def test_direct_map_lives_as_long_as_its_owner_and_large_key_spaces_take_the_hash_path(monkeypatch):
    """The map belongs to table_offsets (or map_owner) and goes with it; a key space past
    DIRECT_MAX_KEYS (the DCN-v2 tables: 204M keys, a 1.6 GB map) gets no map at all."""
    import kernels.unique_partition_triton as up

    monkeypatch.setattr(up, "_DIRECT_MAPS", WeakTensorKeyDictionary())
    keys = on(torch.tensor([3, 1, 3, 7]))
    offsets, owners = on(torch.tensor([0, 2**40]), torch.tensor([-1]))
    check_unique_partition(
        keys.cpu(),
        offsets.cpu(),
        owners.cpu(),
        1,
        up.unique_partition_triton(keys, offsets, owners, 1, key_space=2**26),
    )
    assert len(up._DIRECT_MAPS) == 0
    up.unique_partition_triton(keys, offsets, owners, 1, key_space=10)
    assert [m.first.numel() for m in up._DIRECT_MAPS[offsets].values()] == [10]
    del offsets
    gc.collect()
    assert len(up._DIRECT_MAPS) == 0


@needs_triton
def test_dropping_a_collection_frees_its_dedup_map(monkeypatch):
    """input_dist's direct map (key_space = the fused rows) lives with the collection, not after it."""
    import kernels.unique_partition_triton as up
    from embedding import EmbeddingCollection, SparseOptimizer, Table
    from pipeline.batch import KeyedJagged

    monkeypatch.setattr(up, "_DIRECT_MAPS", WeakTensorKeyDictionary())
    monkeypatch.setenv("RECFUSE_FORCE_TRITON", "1")
    tables = [Table("a", 50, 4, "sum", ("a",)), Table("b", 30, 4, "sum", ("b",))]
    ec = EmbeddingCollection(tables, SparseOptimizer("sgd", 0.1), always_exchange=True)
    with torch.no_grad():
        ec(KeyedJagged.from_lists({"a": [[1, 2], [2]], "b": [[29], []]}))
    assert [m.first.numel() for maps in up._DIRECT_MAPS.values() for m in maps.values()] == [80]
    del ec
    gc.collect()
    assert len(up._DIRECT_MAPS) == 0


@needs_triton
def test_unique_partition_single_table():
    keys = torch.tensor([5, 1, 5, 0, 9, 1], dtype=torch.int64)
    offsets = torch.tensor([0, 10], dtype=torch.int64)
    owners = torch.tensor([-1], dtype=torch.int64)
    for key_space in (10, None):
        result = unique_partition_triton(*on(keys, offsets, owners), 2, key_space=key_space)
        check_unique_partition(keys, offsets, owners, 2, result)
    # first occurrence order, grouped by owner (row % 2): even rows [0] then odd rows [5, 1, 9]
    unique, counts, inverse = unique_partition_reference(keys, offsets, owners, 2)
    assert (
        unique.tolist() == [0, 5, 1, 9]
        and counts.tolist() == [1, 3]
        and inverse.tolist() == [1, 2, 1, 0, 3, 2]
    )


PADDED_CASES = [
    # (path, world_size, max_probes): max_probes=1 overflows the bounded hash pass, so the rerun works
    ("direct", 1, 64),
    ("direct", 3, 64),
    ("hash", 1, 64),
    ("hash", 3, 64),
    ("hash", 3, 1),
]


def padded_inputs(path: str, world_size: int):
    gen = torch.Generator().manual_seed(world_size)
    keys, offsets = make_keys("random" if path == "direct" else "big", 300, gen)
    owners = torch.tensor([min(1, world_size - 1), -1, -1], dtype=torch.int64)
    key_space = 300 if path == "direct" else None
    return keys, offsets, owners, key_space


@needs_triton
@pytest.mark.parametrize("path,world_size,max_probes", PADDED_CASES)
def test_padded_agrees_with_unpadded_on_the_valid_prefix(path, world_size, max_probes):
    keys, offsets, owners, key_space = padded_inputs(path, world_size)
    args = (*on(keys, offsets, owners), world_size, key_space, max_probes)
    unique, counts, inverse = unique_partition_triton(*args)
    padded, padded_counts, padded_inverse = unique_partition_triton(*args, padded=True)
    assert padded.numel() == keys.numel() and unique.numel() < keys.numel()
    assert torch.equal(padded_counts, counts) and torch.equal(padded_inverse, inverse)
    assert torch.equal(padded[: unique.numel()], unique)
    check_unique_partition(keys, offsets, owners, world_size, (unique, counts, inverse))
    # the reference pads the same way
    ref = unique_partition_reference(keys, offsets, owners, world_size, padded=True)
    assert ref[0].numel() == keys.numel()
    assert torch.equal(ref[0][: unique.numel()], unique.cpu())


@needs_triton
@pytest.mark.parametrize("path,world_size,max_probes", PADDED_CASES)
def test_padded_call_never_syncs(path, world_size, max_probes):
    """With padded=True nothing reads a device value on the host, the hash path's overflow rerun
    included; the unpadded call reads one: the unique count that sizes its output."""
    keys, offsets, owners, key_space = padded_inputs(path, world_size)
    args = (*on(keys, offsets, owners), world_size, key_space, max_probes)
    with HostSyncCensus() as census:
        unique_partition_triton(*args, padded=True)
    assert not census.sites
    with HostSyncCensus() as census:
        unique_partition_triton(*args)
    assert sum(census.sites.values()) == 1, census.sites


@needs_triton
@pytest.mark.parametrize("path,world_size,max_probes", PADDED_CASES)
def test_counts_out_receives_the_counts(path, world_size, max_probes):
    """counts_out (a view into a larger buffer) gets the counts, on both paths, empty keys too."""
    keys, offsets, owners, key_space = padded_inputs(path, world_size)
    for k in (keys, keys[:0]):
        buffer = torch.full((2 * world_size,), -1, dtype=torch.int64)
        ref = unique_partition_reference(
            k, offsets, owners, world_size, counts_out=buffer[:world_size]
        )
        assert torch.equal(buffer[:world_size], ref[1]) and buffer[world_size:].eq(-1).all()
        args = (*on(k, offsets, owners), world_size, key_space, max_probes)
        out = on(torch.full((2 * world_size,), -1, dtype=torch.int64))
        result = unique_partition_triton(*args, padded=True, counts_out=out[world_size:])
        assert result[1].data_ptr() == out[world_size:].data_ptr()
        assert torch.equal(out.cpu(), torch.cat([buffer[world_size:], ref[1]]))


def test_unique_partition_rejects_bad_input():
    offsets = torch.tensor([0, 10], dtype=torch.int64)
    owners = torch.tensor([0], dtype=torch.int64)
    with pytest.raises(ValueError, match="int64"):
        unique_partition_triton(torch.zeros(3, dtype=torch.int32), offsets, owners, 1)
    with pytest.raises(ValueError, match="offsets"):
        unique_partition_triton(torch.zeros(3, dtype=torch.int64), offsets[:1], owners, 1)
    with pytest.raises(ValueError, match="world_size"):
        unique_partition_triton(torch.zeros(3, dtype=torch.int64), offsets, owners, 0)
    with pytest.raises(ValueError, match="counts_out must be contiguous int64 \\[2\\]"):
        unique_partition_triton(
            torch.zeros(3, dtype=torch.int64), offsets, owners, 2, counts_out=torch.zeros(3).long()
        )


@pytest.mark.parametrize("world_size", [1, 8])
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA or INTERPRETED, reason="needs a CUDA device and compiled Triton")
def test_unique_partition_cuda(world_size):
    gen = torch.Generator().manual_seed(1)
    offsets = torch.tensor([0, 1000, 50_000, 2**40], dtype=torch.int64)
    owners = torch.tensor([0, -1, -1], dtype=torch.int64)
    keys = torch.randint(0, 60_000, (200_000,), generator=gen, dtype=torch.int64)
    keys[::7] += 2**35
    result = unique_partition_triton(keys.cuda(), offsets.cuda(), owners.cuda(), world_size)
    check_unique_partition(keys, offsets, owners, world_size, result)
