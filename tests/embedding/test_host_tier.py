"""The host tier (embedding.host_tier): tables 10x the device memory budget train through a small
device cache with the same losses, weights and optimizer state, bit for bit, as all on the device."""

import numpy as np
import pytest
import torch

from embedding import state as table_state
from embedding.host_tier import window_metrics
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
[eval]
batch_size = 8
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


def _collection(cache_rows: int, policy: str = "lru", host_dir: str = ""):
    from embedding import SparseOptimizer, Table, plan_sharding
    from embedding.sharded import ShardedEmbeddingCollection

    tables = [
        Table("a", 200, 4, "sum", ("a",), "table", cache_rows=cache_rows),
        Table("b", 30, 4, "mean", ("b",), "table"),
    ]
    plan = plan_sharding(tables, 1, optimizer="adam")
    plan.cache_policy, plan.host_dir = policy, host_dir
    return ShardedEmbeddingCollection(tables, plan, SparseOptimizer("adam", 0.1), seed=3)


def _batches(steps: int, seed: int = 0):
    from pipeline.batch import KeyedJagged

    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        a = torch.randint(0, 200, (4, 3), generator=g).tolist()
        b = torch.randint(0, 30, (4, 1), generator=g).tolist()
        yield KeyedJagged.from_lists({"a": a, "b": b})


def _train_pipelined(ec, batches, eval_batch=None, read_state=False) -> list[float]:
    """The train pipeline's order: batch i+1's input_dist before batch i's backward; an evaluation
    batch between steps, or a state read (a checkpoint's) while batch i+1 waits for its update."""
    losses, batches = [], list(batches)
    nxt = ec.input_dist(batches[0])
    for i in range(len(batches)):
        sd = nxt
        pooled = ec(sd)
        if i + 1 < len(batches):
            nxt = ec.input_dist(batches[i + 1])
        loss = (pooled * pooled).sum()
        loss.backward()
        losses.append(loss.item())
        if eval_batch is not None:
            with torch.no_grad():
                ec(eval_batch)
        if read_state:
            ec.table_digests()
    return losses


def test_state_reads_and_writes_go_through_the_cache():
    device, tiered = _collection(0), _collection(30)
    evaluation = next(_batches(1, seed=9))
    losses = _train_pipelined(device, _batches(6))
    assert _train_pipelined(tiered, _batches(6), evaluation, read_state=True) == losses
    totals = dict(tiered.tier.totals)
    assert totals["written_back"] > 0  # dirty rows were evicted while training
    # the metrics line's figures: the training resolves' counters, per step
    metrics = window_metrics(tiered, 6)
    assert metrics["hit_rate"] == totals["hits"] / totals["lookups"]
    assert metrics["rows_fetched_per_step"] * 6 == totals["fetched"]
    assert metrics["pcie_bytes_per_step"] * 6 == totals["h2d_bytes"] + totals["d2h_bytes"]
    row = 4 * 4 + 2 * 4 * 4 + 8 + 8 + 8  # weight, Adam's m and v, its step, freq, last_step
    assert totals["h2d_bytes"] == totals["fetched"] * row
    # every state path reads the host copy with the cached rows written back
    assert tiered.table_digests() == device.table_digests()
    for name, state in device.shard_tables().items():
        for k, v in state.items():
            assert torch.equal(tiered.shard_tables()[name][k], v), (name, k)
    for got, ref in zip(tiered.export_rows(0, 1, 0), device.export_rows(0, 1, 0), strict=True):
        assert torch.equal(got, ref)
    # checkpoints stream the same blocks, and load back (same id range, then a row-wise one)
    sources = table_state.checkpoint_sources(tiered.layout, tiered.storage, tiered.dynamic)
    ref = table_state.checkpoint_sources(device.layout, device.storage, device.dynamic)
    for name, (description, blocks) in ref.items():
        assert sources[name][0] == description
        for k, (shape, _, fetch) in blocks.items():
            assert torch.equal(sources[name][1][k][2](0, shape[0]).cpu(), fetch(0, shape[0]).cpu())
    loaded = _collection(30)
    for name, (_, blocks) in ref.items():
        t = [x.name for x in loaded.tables].index(name)
        for k, (shape, _, fetch) in blocks.items():
            chunk = fetch(0, shape[0]).cpu()
            for rows, part in (([0, 1, shape[0]], chunk), ([1, 2, shape[0] // 2], chunk[1::2])):
                args = (loaded.layout, loaded.storage, t, rows, k, 0, part)
                table_state.load_static_chunk(*args)
    assert loaded.table_digests() == device.table_digests()
    # a state loaded into a tiered collection reaches the rows it caches; training goes on alike
    full = device.full_state_dict()
    fresh = _collection(30, "lfu")
    _train_pipelined(fresh, _batches(2, seed=5))  # rows cached, then overwritten by the load
    fresh.load_full_state_dict(full)
    fresh.num_updates = device.num_updates
    more = _train_pipelined(device, _batches(3, seed=7))
    assert _train_pipelined(fresh, _batches(3, seed=7)) == more
    assert fresh.table_digests() == device.table_digests()


def test_a_cache_smaller_than_the_batches_in_flight_is_an_error():
    ec = _collection(16)
    batches = list(_batches(2))
    ec.input_dist(batches[0])  # in flight: up to 12 rows of table a
    with pytest.raises(
        ValueError,
        match=r"table 'a': cache_rows=16 on rank 0 cannot hold the \d+ rows this training batch",
    ):
        ec.input_dist(batches[1])


@pytest.mark.parametrize("policy, evicted", [("lru", 0), ("lfu", 1)])
def test_eviction_policy(policy, evicted):
    from pipeline.batch import KeyedJagged

    ec = _collection(4, policy)
    with torch.no_grad():  # evaluation batches: each frees its slots once pooled
        for ids in ([0, 0, 0], [1], [2], [3], [4]):
            ec(KeyedJagged.from_lists({"a": [ids], "b": [[0]]}))
    cached = set(ec.tier.caches[0].row_of.tolist())
    # lru: row 0, the least recently read; lfu: row 1, read once (row 0: 3 times), before 2 and 3
    assert cached == {0, 1, 2, 3, 4} - {evicted}


def test_host_rows_in_memmaps(tmp_path):
    device, mapped = _collection(0), _collection(30, host_dir=str(tmp_path))
    assert _train_pipelined(mapped, _batches(4)) == _train_pipelined(device, _batches(4))
    assert mapped.table_digests() == device.table_digests()
    # table a's rows, optimizer state and statistics live in files there, written back in place
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [f"a.r0.{k}.bin" for k in sorted(device.storage.tracked())]
    on_disk = np.memmap(tmp_path / "a.r0.weight.bin", dtype=np.float32, mode="r").reshape(200, 4)
    assert torch.equal(torch.from_numpy(np.array(on_disk)), device.full_state_dict()["a"]["weight"])


def test_plan_command_prints_host_and_device_bytes(tmp_path, capsys):
    from training.plan import main

    path = tmp_path / "tier.toml"
    path.write_text(TIER_TOML)
    text = main(
        ["--config", str(path), "--world-size", "2", "--embedding.memory_budget_bytes", "9952"]
    )
    lines = {line.split()[0]: line.split() for line in text.splitlines()[3:6]}
    # table, rows, dim, placement, ranks, device bytes/rank, cache rows, host bytes/rank
    assert lines["big"][6] != "all" and lines["mid"][6] != "all" and lines["small"][6] == "all"
    assert "host tier per rank: r0=" in text and text == capsys.readouterr().out.rstrip("\n")


@pytest.mark.parametrize("always_exchange", [False, True])
def test_mixed_dims_through_the_tier(always_exchange):
    """Tables of two dims, one group's table on the tier: the same losses and state as on the device,
    on the one-rank path and on the exchange path (the groups' keys in one packed all-to-all)."""
    from embedding import SparseOptimizer, Table, plan_sharding
    from embedding.mixed import make_collection

    def collection(cache_rows: int):
        tables = [
            Table("a", 200, 4, "sum", ("a",), "table", cache_rows=cache_rows),
            Table("b", 30, 8, "mean", ("b",), "table"),
        ]
        plan = plan_sharding(tables, 1, optimizer="adam")
        opt = SparseOptimizer("adam", 0.1)
        return make_collection(tables, plan, opt, seed=3, always_exchange=always_exchange)

    device, tiered = collection(0), collection(30)
    assert type(tiered).__name__ == "MixedDimCollection"
    losses = _train_pipelined(device, _batches(6))
    assert _train_pipelined(tiered, _batches(6), read_state=True) == losses
    tier = tiered.groups[0].tier
    assert tier is not None and tier.totals["written_back"] > 0
    assert tiered.table_digests() == device.table_digests()
    want = device.full_state_dict()
    for name, state in tiered.full_state_dict().items():
        for key, value in state.items():
            assert torch.equal(value, want[name][key]), (name, key)


def _with_dynamic(rank, world_size, group, always_exchange):
    """A tiered static table beside a dynamic one (raw keys above the tier's virtual rows), trained
    in the pipeline's order with evaluation batches and state reads: (losses, digests, full state,
    tier totals) of the collection on the device and of the tiered one."""
    from embedding import SparseOptimizer, Table, plan_sharding
    from embedding.sharded import ShardedEmbeddingCollection
    from embedding.tables import DynamicSpec
    from pipeline.batch import KeyedJagged

    def batches(steps: int, seed: int):
        g = torch.Generator().manual_seed(seed + 100 * rank)
        for _ in range(steps):
            a = torch.randint(0, 200, (4, 3), generator=g).tolist()
            b = torch.randint(0, 30, (4, 1), generator=g).tolist()
            keys = (torch.randint(0, 12, (4, 2), generator=g) * 1_000_003 + (1 << 61)).tolist()
            d = [k[: i % 3] for i, k in enumerate(keys)]  # bags of 0 to 2 keys
            yield KeyedJagged.from_lists({"a": a, "b": b, "d": d})

    def collection(cache_rows: int):
        spec = DynamicSpec(capacity=8, key_shards=4, admit_min_freq=2)
        tables = [
            Table("a", 200, 4, "sum", ("a",), "row", cache_rows=cache_rows),
            Table("b", 30, 4, "mean", ("b",), "table"),
            Table("d", 100, 4, "mean", ("d",), dynamic=spec),
        ]
        plan = plan_sharding(tables, world_size, optimizer="adam")
        options = dict(rank=rank, world_size=world_size, group=group, seed=3)
        opt = SparseOptimizer("adam", 0.1)
        return ShardedEmbeddingCollection(
            tables, plan, opt, always_exchange=always_exchange, **options
        )

    out = []
    # the cache holds two batches in flight of the rows a rank serves, all distinct
    for ec in (collection(0), collection(24 * world_size)):
        evaluation = next(batches(1, seed=9))
        losses = _train_pipelined(ec, batches(6, seed=0), evaluation, read_state=True)
        totals = dict(ec.tier.totals) if ec.tier is not None else None
        out.append((losses, ec.table_digests(), ec.full_state_dict(), totals))
    return out


@pytest.mark.parametrize(
    "world_size, always_exchange", [(1, False), (1, True), (2, False)], ids=["w1", "w1x", "w2"]
)
def test_dynamic_tables_beside_the_tier(world_size, always_exchange):
    """A collection with dynamic and tiered tables trains as with every row on the device: the same
    losses, digests and full state (the dynamic table's keys and rows included), bit for bit."""
    device, tiered = run_distributed(_with_dynamic, world_size, always_exchange)
    losses, digests, state, totals = tiered
    assert device[3] is None and totals["written_back"] > 0  # dirty rows were evicted
    assert losses == device[0] and losses[0] != losses[-1]
    assert digests == device[1]
    assert set(state) == {"a", "b", "d"} and state["d"]["keys"].numel() > 0
    for name, table in device[2].items():
        for key, value in table.items():
            assert torch.equal(state[name][key], value), (name, key)
