"""Dynamic tables in one process: admission, eviction (age and LRU), growth, errors, key encoding, digests."""

import pytest
import torch

from embedding import EmbeddingCollection, SparseOptimizer, Table
from embedding.dynamic import DynamicTableFull, init_rows, table_salt
from embedding.tables import DynamicSpec
from pipeline.batch import KeyedJagged

BIG = 2**63 - 1  # the largest key: any non-negative int64 is one


def dynamic(name, features=None, pooling="sum", **spec):
    spec = {"capacity": 8, "key_shards": 4, **spec}
    return Table(name, 100, 4, pooling, tuple(features or (name,)), dynamic=DynamicSpec(**spec))


def collection(tables, optimizer="sgd", lr=0.5, seed=1, always_exchange=False):
    return EmbeddingCollection(
        tables, SparseOptimizer(optimizer, lr), seed=seed, always_exchange=always_exchange
    )


def step(ec, bags, upstream=None):
    """Forward + backward of one batch; returns the pooled output."""
    out = ec(KeyedJagged.from_lists(bags))
    (out * (torch.ones_like(out) if upstream is None else upstream)).sum().backward()
    return out.detach()


def initial(ec, name, keys):
    """The row a key gets when admitted: a hash of (seed, table, key, column)."""
    shard = next(s for s in ec.dynamic.shards.values() if s.name == name)
    return init_rows(
        torch.tensor(keys), ec.seed, table_salt(name), ec.dim, shard.bound, torch.float32
    )


def state_by_key(ec, name):
    full = ec.full_state_dict()[name]
    return {
        k: {n: v[i] for n, v in full.items() if n != "keys"}
        for i, k in enumerate(full["keys"].tolist())
    }


def test_admission_reads_zeros_until_the_nth_lookup_then_trains():
    ec = collection([dynamic("d", admit_min_freq=3)])
    k, j = 2**40 + 3, 7
    assert torch.equal(step(ec, {"d": [[k], []]}), torch.zeros(2, 1, 4))  # seen once: no row yet
    assert torch.equal(step(ec, {"d": [[k], [j]]}), torch.zeros(2, 1, 4))  # twice
    out = step(ec, {"d": [[k], [j]]})  # third lookup: admitted in this step, read and trained in it
    torch.testing.assert_close(out[0, 0], initial(ec, "d", [k])[0], rtol=0, atol=0)
    assert torch.equal(out[1, 0], torch.zeros(4))  # j: two lookups so far
    rows = state_by_key(ec, "d")
    assert list(rows) == [k]
    # one SGD step, gradient 1
    torch.testing.assert_close(rows[k]["weight"], initial(ec, "d", [k])[0] - 0.5)
    # freq counts the lookups before admission
    assert int(rows[k]["freq"]) == 3 and int(rows[k]["last_step"]) == 3
    metrics = ec.dynamic_metrics()["d"]
    assert (metrics["live"], metrics["pending"], metrics["admitted"]) == (1, 1, 1)
    # the zero rows the pending key read (its table's) and the static kernels read got no update,
    # no state
    for value in ec.storage.tracked().values():
        assert not value[ec.layout.null_row].any()
    for value in ec.storage.tracked(0).values():
        assert not value[0].any()


def test_eviction_after_k_steps_frees_the_row_and_forgets_the_count():
    ec = collection([dynamic("d", evict_after_steps=2, admit_min_freq=1)])
    step(ec, {"d": [[1, 2]]})
    step(ec, {"d": [[2]]})
    step(ec, {"d": [[2]]})
    assert sorted(state_by_key(ec, "d")) == [1, 2]  # step 3: key 1 unseen for 2 steps, still held
    step(ec, {"d": [[3]]})
    assert sorted(state_by_key(ec, "d")) == [2, 3]  # step 4: unseen for 3 > 2 steps: evicted
    assert ec.dynamic_metrics()["d"]["evicted_total"] == 1
    # back: a fresh row, initialized as the first time (no trace of its training)
    out = step(ec, {"d": [[1]]})
    torch.testing.assert_close(out[0, 0], initial(ec, "d", [1])[0], rtol=0, atol=0)
    assert ec.dynamic.shards[0].pool == 8  # freed rows were reused, nothing grew


def test_expiry_sweeps_every_n_steps_and_evicts_within_e_to_e_plus_n(monkeypatch):
    """evict_after_steps = E = 16 sweeps every N = 2 steps: a key last seen at step t goes at the first even step
    after t + E (t = 1: step 18, exactly E + 1 later; t = 2: step 20, E + 2 later); odd steps touch no slot."""
    ec = collection([dynamic("d", evict_after_steps=16, admit_min_freq=1)])
    shard = ec.dynamic.shards[0]
    sweeps = []
    remove = shard._remove
    monkeypatch.setattr(shard, "_remove", lambda mask: sweeps.append(1) or remove(mask))
    step(ec, {"d": [[1]]})  # step 1
    step(ec, {"d": [[2]]})  # step 2
    held = []
    for _ in range(3, 21):
        step(ec, {"d": [[3]]})
        held.append(sorted(state_by_key(ec, "d")))
    assert held[17 - 3] == [1, 2, 3]  # step 17: 1 unseen for 16 steps
    assert held[18 - 3] == [2, 3]  # step 18: 1 evicted (17 > 16); 2 unseen for 16
    assert held[19 - 3] == [2, 3]  # step 19: 2 unseen for 17 > 16 steps, but 19 does not sweep
    assert held[20 - 3] == [3]  # step 20 sweeps: 2 evicted, E + 2 steps after its last lookup
    assert len(sweeps) == 10  # steps 2, 4, ..., 20: half the steps
    assert ec.dynamic_metrics()["d"]["evicted_total"] == 2


def test_evict_when_full_frees_the_least_recently_seen_key_of_the_shard():
    ec = collection([dynamic("d", capacity=3, key_shards=1, evict_when_full=True)])
    step(ec, {"d": [[10, 11]]})
    # 4 keys > capacity 3: 10 and 11 are the least recent; the smaller key goes first
    step(ec, {"d": [[12, 5]]})
    assert sorted(state_by_key(ec, "d")) == [5, 11, 12]
    step(ec, {"d": [[11]]})
    step(ec, {"d": [[13]]})  # least recent now: 5 and 12 (step 2); 5 < 12
    assert sorted(state_by_key(ec, "d")) == [11, 12, 13]
    with pytest.raises(
        DynamicTableFull, match=r"dynamic table 'd': key shard 0 of 1 holds 3 rows \(capacity=3"
    ):
        step(ec, {"d": [[20, 21, 22, 23]]})  # one step's keys cannot all have rows


def test_full_table_stops_naming_table_capacity_and_live_keys():
    ec = collection([dynamic("users", capacity=4, max_capacity=4, key_shards=1)])
    step(ec, {"users": [[1, 2, 3]]})
    with pytest.raises(
        DynamicTableFull,
        match=r"dynamic table 'users' is full on rank 0: max_capacity=4 rows .* hold "
        r"3 live keys and this step admits 2 more",
    ):
        step(ec, {"users": [[4, 5]]})


def test_growth_and_rehash_do_not_change_results():
    keys = torch.randint(0, 2**62, (60,), generator=torch.Generator().manual_seed(0)).tolist()
    results = []
    for capacity, load_factor in ((2, 0.25), (1024, 0.5)):
        ec = collection(
            [
                dynamic(
                    "d",
                    capacity=capacity,
                    load_factor=load_factor,
                    admit_min_freq=2,
                    evict_after_steps=3,
                )
            ],
            optimizer="adagrad",
        )
        outs = [step(ec, {"d": [keys[i : i + 7], keys[i + 3 : i + 5]]}) for i in range(0, 50, 4)]
        results.append((outs, state_by_key(ec, "d"), ec.dynamic.shards[0].pool))
    (small_out, small_state, small_pool), (big_out, big_state, _) = results
    assert small_pool > 2  # it grew (and the index, at load factor 0.25, was rehashed on the way)
    assert all(torch.equal(a, b) for a, b in zip(small_out, big_out, strict=True))
    assert small_state.keys() == big_state.keys() and small_state
    for key, values in small_state.items():
        for name, value in values.items():
            assert torch.equal(value, big_state[key][name]), (key, name)


def test_negative_key_names_feature_table_sample_and_id():
    ec = collection([Table("s", 5, 4, "sum", ("s",)), dynamic("d", features=("d_a", "d_b"))])
    with pytest.raises(
        ValueError, match=r"feature 'd_b' \(table 'd', dynamic\): sample 1 has negative id -3"
    ):
        ec(KeyedJagged.from_lists({"s": [[1], [2]], "d_a": [[BIG], [4]], "d_b": [[], [5, -3]]}))


def test_table_and_raw_id_pairs_are_separate_keys():
    """The same raw id in two dynamic tables (and as a static row id) is three rows, updated separately."""
    ec = collection([Table("s", 8, 4, "sum", ("s",)), dynamic("a"), dynamic("b")])
    upstream = torch.zeros(1, 3, 4)
    upstream[0, 1] = 1.0  # only table a's bag gets a gradient
    out = step(ec, {"s": [[5]], "a": [[5]], "b": [[5]]}, upstream)
    # different initial rows: the table is part of the key
    assert not torch.equal(out[0, 1], out[0, 2])
    a, b = state_by_key(ec, "a")[5], state_by_key(ec, "b")[5]
    torch.testing.assert_close(a["weight"], initial(ec, "a", [5])[0] - 0.5)
    torch.testing.assert_close(b["weight"], initial(ec, "b", [5])[0], rtol=0, atol=0)  # untouched
    # the static row kept its value
    assert torch.equal(ec.full_state_dict()["s"]["weight"][5], out[0, 0])


def test_evaluation_looks_up_only():
    ec = collection([dynamic("d")])
    step(ec, {"d": [[1, 2]]})
    before = {k: v.clone() for t in (None, 0) for k, v in ec.storage.tracked(t).items()}
    with torch.no_grad():
        out = ec(KeyedJagged.from_lists({"d": [[1], [3, BIG]]}))
    torch.testing.assert_close(out[0, 0], state_by_key(ec, "d")[1]["weight"])
    assert torch.equal(out[1, 0], torch.zeros(4))  # unseen keys: zeros, and no insertion
    assert sorted(state_by_key(ec, "d")) == [1, 2] and ec.dynamic.shards[0].entries == 2
    assert all(torch.equal(v, before[k]) for k, v in ec.storage.tracked(0).items())


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad", "adam"])
def test_single_rank_path_equals_the_exchange_path(optimizer):
    """W = 1 pools straight from the storage; the segmented exchange path on one rank computes the same, to the bit."""
    tables = [
        Table("s", 9, 4, "mean", ("s", "s2")),
        dynamic("d", admit_min_freq=2, evict_after_steps=2),
        dynamic("e", pooling="mean", capacity=6, key_shards=2, evict_when_full=True),
    ]
    batches = [
        {"s": [[1, 1], []], "s2": [[8], [0]], "d": [[BIG, 2**33], [7]], "e": [[1, 2, 3], [2**50]]},
        {"s": [[3], [4]], "s2": [[], []], "d": [[7], [7, 9]], "e": [[4], [5, 6]]},
        {"s": [[], [2]], "s2": [[1], [1]], "d": [[BIG], []], "e": [[1], [2**50, 7]]},
    ]
    results = []
    for single_rank in (True, False):
        ec = collection(tables, optimizer=optimizer, lr=0.1, always_exchange=not single_rank)
        outs = [
            step(ec, b, torch.arange(8.0).view(2, 2, 2).repeat(1, 2, 2).sin()) for b in batches * 3
        ]
        results.append(
            (outs, {t: state_by_key(ec, t) for t in ("d", "e")}, ec.full_state_dict()["s"])
        )
    (a_out, a_dyn, a_static), (b_out, b_dyn, b_static) = results
    assert all(torch.equal(x, y) for x, y in zip(a_out, b_out, strict=True))
    assert all(torch.equal(v, b_static[k]) for k, v in a_static.items())
    for name, rows in a_dyn.items():
        assert rows.keys() == b_dyn[name].keys() and rows
        assert all(
            torch.equal(v, b_dyn[name][key][n]) for key, r in rows.items() for n, v in r.items()
        )


def test_digest_depends_on_keys_and_values_not_on_slots_or_rows():
    """Two collections that admitted the same keys in different orders (other slots, other rows) hold the same
    table, so the same digest; one changed bit changes it."""
    keys = [3, 2**40, BIG, 17, 5]
    a, b = collection([dynamic("d")]), collection([dynamic("d")])
    step(a, {"d": [keys]}, torch.zeros(1, 1, 4))
    for key in reversed(keys):
        step(b, {"d": [[key]]}, torch.zeros(1, 1, 4))
    assert a.dynamic.shards[0].slot_row.tolist() != b.dynamic.shards[0].slot_row.tolist()
    assert a.table_digests() == b.table_digests()
    row = int(a.dynamic.shards[0].find_rows(torch.tensor([BIG]))[0]) + a.layout.base[0]
    weight = a.storage.of(0).weight
    weight[row, 2] = torch.nextafter(weight[row, 2], torch.tensor(1.0))
    assert a.table_digests() != b.table_digests()
