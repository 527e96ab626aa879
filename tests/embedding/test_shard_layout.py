"""ShardLayout: one answer to who holds a row and where it is stored, under every placement."""

import pytest
import torch

from embedding import Table, plan_sharding
from embedding.layout import ShardLayout
from embedding.tables import DynamicSpec

TABLES = [
    Table("a", 11, 4, "sum", ("a",)),
    Table("b", 7, 4, "sum", ("b",)),
    Table("c", 3, 4, "sum", ("c",)),
    Table("d", 5, 4, "sum", ("d",), placement="replicated"),
]


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("placement", ["table", "row", "auto"])
def test_every_row_has_one_owner_and_one_storage_row(world_size, placement):
    plan = plan_sharding(TABLES, world_size, default_placement=placement, replicate_below_bytes=100)
    layouts = [ShardLayout(TABLES, plan, r, world_size, "cpu", {}) for r in range(world_size)]
    for t, table in enumerate(TABLES):
        ids = torch.arange(-2, table.num_embeddings + 3)
        holders = torch.stack([layout.holds(t, ids) for layout in layouts]).sum(0)
        inside = (ids >= 0) & (ids < table.num_embeddings)
        replicated = layouts[0].kinds[t] == "replicated"
        assert torch.equal(holders, inside.long() * (world_size if replicated else 1))
        for rank, layout in enumerate(layouts):
            rows = layout.global_rows(t)  # storage order
            assert torch.equal(rows, ids[layout.holds(t, ids)])
            assert torch.equal(
                layout.owner(rows + int(layout.table_offsets[t])), torch.full_like(rows, rank)
            )
            stored = layout.table_local_rows(t, rows)
            assert torch.equal(
                stored, torch.arange(layout.base[t], layout.base[t] + layout.count[t])
            )
        assert [layout.primary(t) for layout in layouts] == [
            r == 0 or not replicated for r in range(world_size)
        ]


def test_replicated_tables_come_first_and_dynamic_tables_grow_in_their_own_storage():
    tables = [
        *TABLES[:3],
        Table("k", 100, 4, "sum", ("k",), dynamic=DynamicSpec(8, key_shards=4)),
        TABLES[3],
    ]
    plan = plan_sharding(tables, 2, default_placement="row", replicate_below_bytes=0)
    layout = ShardLayout(tables, plan, 1, 2, "cpu", {3: 4})
    static = layout.num_static_rows
    assert (layout.base[4], layout.count[4]) == (0, 5)  # replicated
    assert [layout.count[t] for t in range(3)] == [5, 3, 1] and static == 5 + 5 + 3 + 1
    # the dynamic table's rows follow its own storage's null row 0
    assert (layout.null_row, layout.base[3], layout.count[3]) == (static, 1, 4)
    assert layout.num_local_rows == static + 1 and layout.num_keys == 11 + 7 + 3 + 5
    base = list(layout.base)
    layout.place_dynamic({3: 9})
    # growth changes the table's row count only: no static row moves
    assert layout.count[3] == 9 and layout.base == base
    assert layout.num_local_rows == static + 1 == int(layout.local_space[1])
