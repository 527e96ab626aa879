"""The host tier (embedding.host_tier): tables 10x the device memory budget train through a small
device cache with the same losses, weights and optimizer state, bit for bit, as all on the device."""

import pytest
import torch

from tests.support.dist_utils import run_distributed
from tests.support.training import dense_state, host_batches, load_parts, train_losses

# 32-dim rows with row-wise Adagrad: 132 B a row, so the tier's 4-byte device map is 3% of a row
TIER_TOML = """
[data]
num_dense = 4
zipf_exponent = 1.05
bag_min = 1
bag_max = 1
[model]
bottom_mlp = [8, 32]
top_mlp = [8]
[embedding]
dim = 32
replicate_below_bytes = 2000
[[embedding.tables]]
name = "big"
num_embeddings = 1000
placement = "row"
[[embedding.tables]]
name = "mid"
num_embeddings = 500
pooling = "mean"
placement = "row"
[[embedding.tables]]
name = "small"
num_embeddings = 8
[optimizer]
dense = "adam"
dense_lr = 0.01
sparse_lr = 0.1
[train]
steps = 10
global_batch_size = 8
"""
ROW = 32 * 4 + 4
TABLE_BYTES = (1000 + 500 + 8) * ROW


def _budget(world_size: int) -> int:
    """Per-rank bytes: the tables are 10x the device memory of all ranks together."""
    return TABLE_BYTES // (10 * world_size)


def _train(rank, world_size, group, toml, cases):
    """Per case (budget, policy, pipelined): losses, full table state, dense state, cache rows and
    the tier's totals."""
    out = {}
    for budget, policy, pipelined in cases:
        argv = ["--config", toml, "--embedding.memory_budget_bytes", str(budget)]
        argv += ["--embedding.cache_policy", policy, "--train.pipelined", str(pipelined)]
        cfg, parts = load_parts(argv, rank, world_size, group)
        batches = host_batches(cfg, rank, world_size)
        losses = list(train_losses(cfg, parts, world_size, batches=batches).values())
        emb = parts.embeddings
        cache = {n: p.cache_rows for n, p in parts.plan.placements.items()}
        # (before the state read below writes back the rows still cached)
        totals = dict(emb.tier.totals) if emb.tier is not None else None
        out[(budget, policy, pipelined)] = (
            losses,
            emb.full_state_dict(),
            dense_state(parts),
            cache,
            totals,
        )
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    path = tmp_path_factory.mktemp("tier") / "tier.toml"
    path.write_text(TIER_TOML)
    out = {}
    for w in (1, 2):
        # both policies and both pipeline modes (each the same as the other on the device)
        cases = [(0, "lru", True), (_budget(w), "lru", w == 2)]
        cases += [(_budget(1), "lfu", True)] if w == 1 else []
        out[w] = (cases, run_distributed(_train, w, str(path), cases))
    return out


@pytest.mark.parametrize("world_size", [1, 2])
def test_tables_10x_the_budget_train_as_on_the_device(runs, world_size):
    cases, results = runs[world_size]
    ref_losses, ref_tables, ref_dense, ref_cache, ref_totals = results[cases[0]]
    assert ref_totals is None and set(ref_cache.values()) == {0}
    for case in cases[1:]:
        losses, tables, dense, cache, totals = results[case]
        # the planner put the two large tables on the tier, each with a cache far below its rows
        assert cache["small"] == 0 and 0 < cache["big"] < 1000 // (10 * world_size)
        assert 0 < cache["mid"] < 500 // (10 * world_size)
        # more rows fetched than the caches hold: dirty rows were evicted and written back
        assert totals["fetched"] > cache["big"] + cache["mid"] and totals["written_back"] > 0
        assert 0 < totals["hits"] < totals["lookups"]
        assert losses == ref_losses, case
        for name, ref_state in ref_tables.items():
            for key, ref in ref_state.items():
                assert torch.equal(tables[name][key], ref), (case, name, key)
        for key, ref in ref_dense.items():
            assert torch.equal(dense[key], ref), (case, key)
    assert ref_losses[0] != ref_losses[-1]  # training moved
