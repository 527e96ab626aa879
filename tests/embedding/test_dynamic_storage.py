"""A storage per dynamic table (embedding.storage, embedding.dynamic_steps): growing a table allocates
its rows and index only, the static rows and the other dynamic tables stay where they are; the step's
kernels over the tables' storages give the Triton path the reference's results."""

import os

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from embedding import EmbeddingCollection, SparseOptimizer, Table
from embedding.tables import DynamicSpec
from pipeline.batch import KeyedJagged


def dynamic(name: str) -> Table:
    spec = DynamicSpec(8, key_shards=4, admit_min_freq=1)
    return Table(name, 1000, 16, "sum", (name,), dynamic=spec)


def test_growth_allocates_only_the_growing_tables_rows_and_index():
    tables = [Table("big", 50_000, 16, "sum", ("big",)), dynamic("d"), dynamic("e")]
    ec = EmbeddingCollection(tables, SparseOptimizer("adagrad", 0.1))
    storage, shard, resize = ec.storage, ec.dynamic.shards[1], ec.dynamic._resize
    grown = []

    def others():
        """Static rows and the other dynamic table: {name: tensor}."""
        return {**storage.tracked(), **{f"e.{k}": v for k, v in storage.tracked(2).items()}}

    def counted(pools):
        old_pool = shard.pool
        before = {k: (v.data_ptr(), v.clone()) for k, v in others().items()}
        old = {k: v.clone() for k, v in storage.tracked(1).items()}
        # a counting hook on the CPU allocator: every allocation during the growth, by size
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            resize(pools)
        sizes = [e.self_cpu_memory_usage for e in prof.events() if e.self_cpu_memory_usage > 0]
        new = storage.tracked(1)
        # the table's rows kept their values (its null row 0 and its old rows)
        assert all(torch.equal(new[k][: v.shape[0]], v) for k, v in old.items())
        assert all(not v[old[k].shape[0] :].any() for k, v in new.items())  # new rows: zero
        # static rows and the other dynamic table: the same memory, the same values
        for k, v in others().items():
            assert v.data_ptr() == before[k][0] and torch.equal(v, before[k][1]), k
        grown.append((old_pool, sizes))

    ec.dynamic._resize = counted
    out = ec(KeyedJagged.from_lists({"big": [[1]], "d": [list(range(40))], "e": [[3]]}))
    out.sum().backward()

    assert len(grown) == 1
    old_pool, sizes = grown[0]
    assert shard.pool >= 40 > old_pool
    new = storage.tracked(1)
    table_bytes = sum(v.numel() * v.element_size() for v in new.values())
    index_bytes = shard.free.numel() * shard.free.element_size()
    # each of the table's new tensors (and its free list) is one allocation of its full size
    for v in [*new.values(), shard.free]:
        assert v.numel() * v.element_size() in sizes
    # besides them: the free list's new entries (an int64 arange) and scalar fills, no row
    rest = sum(sizes) - table_bytes - index_bytes
    assert 0 <= rest <= 8 * (shard.pool - old_pool) + 64
    static_bytes = sum(v.numel() * v.element_size() for v in storage.tracked().values())
    assert sum(sizes) * 100 < static_bytes


@pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1",
    reason="forces Triton on CPU tensors, which only the interpreter runs",
)
def test_triton_kernels_over_the_tables_storages_match_the_reference(monkeypatch):
    """One rank: pooling and the fused backward per dynamic table storage (sliced pooled gradients,
    a table's own bag offsets; a growth in the second step) on Triton give the reference's outputs
    and tables (the exchange path's: test_dynamic_equivalence.py)."""
    pytest.importorskip("triton")
    tables = [
        Table("s", 9, 16, "mean", ("s",)),
        dynamic("d"),
        Table("t", 5, 16, "sum", ("t", "t2")),
        Table("e", 100, 16, "mean", ("e",), dynamic=DynamicSpec(2, key_shards=2)),
    ]
    batches = [
        {"s": [[1], []], "d": [[5, 2**40], [5]], "t": [[1], [2]], "t2": [[], [0]], "e": [[3], []]},
        {
            "s": [[2], [3]],
            "d": [[9], list(range(12))],
            "t": [[], [4]],
            "t2": [[1], []],
            "e": [[3, 4], [7]],
        },
    ]
    results = []
    for triton in (True, False):
        if triton:
            monkeypatch.setenv("RECFUSE_FORCE_TRITON", "1")
        else:
            monkeypatch.delenv("RECFUSE_FORCE_TRITON")
        ec = EmbeddingCollection(tables, SparseOptimizer("adagrad", 0.1))
        outs = []
        for batch in batches:
            out = ec(KeyedJagged.from_lists(batch))
            (out * torch.arange(out.numel()).view(out.shape).float().sin()).sum().backward()
            outs.append(out.detach())
        results.append((outs, ec.full_state_dict()))
    (outs, state), (ref_outs, ref_state) = results
    for out, ref in zip(outs, ref_outs, strict=True):
        torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    for name, ref in ref_state.items():
        for k, v in ref.items():
            torch.testing.assert_close(state[name][k], v, rtol=1e-6, atol=1e-6, msg=f"{name} {k}")
