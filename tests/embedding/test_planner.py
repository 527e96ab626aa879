"""plan_sharding: placement rules, balance, the budget error and the printed plan."""

import pytest

from embedding import Table, plan_sharding
from embedding.tables import row_bytes

DIM = 8
ROW = row_bytes(DIM, "float32", "adagrad")  # 8 floats + 1 row-wise Adagrad accumulator = 36 B


def table(name, rows, placement="auto", lookups=1.0):
    return Table(name, rows, DIM, "sum", (name,), placement, lookups)


def test_row_bytes_counts_weights_and_optimizer_state():
    assert ROW == 8 * 4 + 4
    assert row_bytes(DIM, "bfloat16", "sgd") == 8 * 2
    # weight, m, v, and an int64 per-row step
    assert row_bytes(DIM, "float32", "adam") == 3 * 8 * 4 + 8


def test_auto_replicates_small_tables_and_keeps_the_rest_whole():
    tables = [table("a", 1000), table("b", 900), table("c", 800), table("tiny", 10)]
    plan = plan_sharding(tables, 2, replicate_below_bytes=100 * ROW)
    kinds = {n: p.placement for n, p in plan.placements.items()}
    assert kinds == {"a": "table", "b": "table", "c": "table", "tiny": "replicated"}
    # greedy, largest first: a -> 0, b -> 1, c -> 1 (rank 1 holds 900 < 1000 rows)
    assert [plan.placements[n].owner for n in "abc"] == [0, 1, 1]
    assert plan.rank_bytes() == [(1000 + 10) * ROW, (900 + 800 + 10) * ROW]


def test_auto_row_shards_a_table_larger_than_an_even_share():
    # 4 ranks, 2400 sharded rows: an even share is 600; "huge" (1200) alone would exceed it table-wise
    tables = [table("huge", 1200), table("b", 500), table("c", 400), table("d", 300)]
    plan = plan_sharding(tables, 4, replicate_below_bytes=0)
    kinds = {n: p.placement for n, p in plan.placements.items()}
    assert kinds == {"huge": "row", "b": "table", "c": "table", "d": "table"}
    assert plan.placements["huge"].bytes_per_rank == [300 * ROW] * 4
    assert sorted(plan.placements[n].owner for n in "bcd") == [0, 1, 2]
    # table-wise "huge" would have been 1200 rows on one rank
    assert max(plan.rank_bytes()) == 800 * ROW
    # at W = 1 nothing is sharded
    assert {
        p.placement for p in plan_sharding(tables, 1, replicate_below_bytes=0).placements.values()
    } == {"table"}


def test_row_wise_bytes_follow_interleaved_ownership():
    plan = plan_sharding([table("odd", 11, placement="row")], 4)
    # rows r, r+4, r+8
    assert plan.placements["odd"].bytes_per_rank == [3 * ROW, 3 * ROW, 3 * ROW, 2 * ROW]


def test_pinned_placement_wins_over_the_default():
    tables = [
        table("pinned", 50, placement="replicated"),
        table("x", 100),
        table("y", 100, placement="row"),
    ]
    plan = plan_sharding(tables, 2, default_placement="table")
    assert {n: p.placement for n, p in plan.placements.items()} == {
        "pinned": "replicated",
        "x": "table",
        "y": "row",
    }


def test_lookups_break_ties_between_equal_bytes():
    # same bytes, but "hot" is looked up 10x: the two hot tables must not share a rank
    tables = [
        table("hot1", 100, lookups=10),
        table("hot2", 100, lookups=10),
        table("cold1", 100),
        table("cold2", 100),
    ]
    plan = plan_sharding(tables, 2, replicate_below_bytes=0)
    assert plan.placements["hot1"].owner != plan.placements["hot2"].owner


def test_budget_error_names_ranks_and_largest_tables():
    # below even the host tier's device map of "user" (4 B a row)
    tables = [table("user", 1000, placement="table"), table("item", 500, placement="table")]
    with pytest.raises(
        ValueError, match=r"memory_budget_bytes.*rank 0 needs .*over by.*user \(35\.2KiB, table\)"
    ):
        plan_sharding(tables, 2, memory_budget_bytes=3_000)


def test_budget_puts_the_largest_tables_on_the_host_tier():
    tables = [table("user", 1000, placement="table"), table("item", 500, placement="table")]
    budget = 20_000
    plan = plan_sharding(tables, 2, memory_budget_bytes=budget)
    user, item = plan.placements["user"], plan.placements["item"]
    assert item.cache_rows == 0 and 0 < user.cache_rows < 1000
    # the device map (4 B a row) and the cache fill rank 0's budget to within a row
    assert budget - ROW < user.bytes_per_rank[0] == user.cache_rows * ROW + 1000 * 4 <= budget
    assert user.host_bytes_per_rank[0] == 1000 * (ROW + 28)
    text = plan.format(tables)
    assert text.splitlines()[2].split()[6] == f"{user.cache_rows:,}"
    assert "host tier per rank: r0=" in text
    # a cache floor (the rows the batches in flight may read) comes first, the rest is shared
    floored = plan_sharding(tables, 2, memory_budget_bytes=budget, cache_floor={"user": 400})
    assert 400 < floored.placements["user"].cache_rows < user.cache_rows + 400
    with pytest.raises(ValueError, match="memory_budget_bytes"):  # a floor that cannot fit
        plan_sharding(tables, 2, memory_budget_bytes=budget, cache_floor={"user": 600})


def test_forced_cache_rows_and_bad_placements():
    forced = Table("t", 100, DIM, "sum", ("t",), "row", cache_rows=10)
    plan = plan_sharding([forced], 2)
    assert plan.placements["t"].cache_rows == 10
    assert plan.placements["t"].bytes_per_rank == [10 * ROW + 50 * 4] * 2
    with pytest.raises(ValueError, match="table 'r': cache_rows needs a static table"):
        plan_sharding([Table("r", 100, DIM, "sum", ("r",), "replicated", cache_rows=10)], 2)


def test_budget_turns_an_oversized_auto_table_row_wise():
    tables = [table("user", 1000), table("item", 100)]
    plan = plan_sharding(tables, 2, replicate_below_bytes=0, memory_budget_bytes=30_000)
    assert plan.placements["user"].placement == "row" and max(plan.rank_bytes()) <= 30_000


def test_format_lists_every_table_and_rank_totals():
    tables = [table("user", 1000), table("tiny", 3)]
    text = plan_sharding(tables, 2, replicate_below_bytes=10 * ROW).format(tables)
    lines = text.splitlines()
    # the only sharded table: row-wise
    assert lines[2].split()[:5] == ["user", "1,000", "8", "row", "0-1"]
    assert lines[3].split()[:4] == ["tiny", "3", "8", "replicated"]
    # 500 rows x 36 B + 3 replicated rows
    assert lines[-1] == "total per rank: r0=17.7KiB, r1=17.7KiB"
