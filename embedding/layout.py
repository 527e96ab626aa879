"""ShardLayout: which rank holds every row, and where this rank stores it.

Keys. Id i of static table t is the key ``table_offsets[t] + i`` of the fused key space. Owner:
table-wise -> the table's rank; row-wise -> i % W; replicated -> every rank (each counts itself).

Storage rows on this rank:
    [replicated | table-wise | row-wise shards | null | dynamic table regions]
Replicated tables come first, the same on every rank, so their gradients can be all-reduced densely.
Row i of a row-wise table is local row i // W on rank i % W. Dynamic tables (embedding.dynamic) have
no keys here, only a region each, which grows (place_dynamic).
"""

from __future__ import annotations

import torch

from embedding.planner import ShardingPlan
from embedding.tables import Table
from kernels.ownership import local_rows, owner_of

# storage order of the regions by placement ("key": dynamic tables, after the null row)
_REGION_ORDER = {"replicated": 0, "table": 1, "row": 2, "key": 3}


def _local_count(table: Table, kind: str, owner: int, rank: int, world_size: int) -> int:
    """Rows of a static table that this rank stores."""
    if kind == "row":
        return len(range(rank, table.num_embeddings, world_size))
    return table.num_embeddings if owner == rank else 0


class ShardLayout:
    """Owners of the static tables' keys, and the storage rows of every table on this rank.

    Host lists (reading a device tensor would sync): ``base[t]`` and ``count[t]``, the first storage
    row and the rows of table t here (a dynamic table: its whole region), and ``kinds[t]``, its
    placement. Device tensors for the step's kernels: ``table_offsets``, ``table_rows``,
    ``table_owner``, ``local_base`` (= base), ``local_space``, ``local_owner``.
    """

    def __init__(
        self,
        tables: list[Table],
        plan: ShardingPlan,
        rank: int,
        world_size: int,
        device,
        dynamic_rows: dict[int, int],
    ):
        self.tables, self.rank, self.world_size = tables, rank, world_size
        # each table's index in the run's table list (a collection of one embedding dim holds a subset,
        # embedding.mixed): its initial rows and digests are keyed by it, so they do not depend on grouping
        self.table_ids = list(range(len(tables)))
        self.kinds = [plan.placements[t.name].placement for t in tables]
        owner = [
            plan.placements[t.name].owner if k == "table" else rank if k == "replicated" else -1
            for t, k in zip(tables, self.kinds, strict=True)
        ]
        rows = torch.tensor(
            [0 if t.dynamic else t.num_embeddings for t in tables], dtype=torch.int64
        )
        offsets = torch.zeros(len(tables) + 1, dtype=torch.int64)
        offsets[1:] = torch.cumsum(rows, 0)
        self.count = [
            dynamic_rows[t]
            if t in dynamic_rows
            else _local_count(tables[t], self.kinds[t], owner[t], rank, world_size)
            for t in range(len(tables))
        ]
        self.base = [0] * len(tables)
        cursor = 0
        for t in sorted(range(len(tables)), key=lambda i: (_REGION_ORDER[self.kinds[i]], i)):
            if t not in dynamic_rows:
                self.base[t] = cursor
                cursor += self.count[t]
        self.num_static_rows = cursor
        self.num_replicated_rows = sum(
            n for n, k in zip(self.count, self.kinds, strict=True) if k == "replicated"
        )
        # with dynamic tables: the null row reads zeros for keys without a row (updates to it are
        # undone)
        self.null_row = cursor if dynamic_rows else None
        self.num_keys = int(offsets[-1])  # size of the fused key space
        self.num_local_rows, _ = self._place(dynamic_rows)
        self._host_offsets, self._host_owner = offsets, torch.tensor(owner, dtype=torch.int64)
        self.table_offsets = offsets.to(device)
        self.table_rows = rows.to(device)
        self.table_owner = self._host_owner.to(device)
        self.local_base = torch.tensor(self.base, dtype=torch.int64, device=device)
        # the storage rows as one table on one rank: the owner's dedup of the rows it serves
        self.local_space = torch.tensor([0, max(self.num_local_rows, 1)], device=device)
        self.local_owner = torch.zeros(1, dtype=torch.int64, device=device)

    def _place(self, rows: dict[int, int]) -> tuple[int, list[tuple[int, int, int]]]:
        """Regions of rows[t] rows for the dynamic tables, in table order after the null row
        (host lists only). Returns the storage rows and the copies (old start, new start, rows)
        that keep what is stored."""
        keep = self.num_static_rows + (1 if rows else 0)
        moves, cursor = [(0, 0, keep)], keep
        for t, n in rows.items():
            moves.append((self.base[t], cursor, self.count[t]))
            self.base[t], self.count[t] = cursor, n
            cursor += n
        return cursor, moves

    def place_dynamic(self, rows: dict[int, int]) -> list[tuple[int, int, int]]:
        """Regions of rows[t] rows for every dynamic table t (never fewer than now). Returns the
        copies (old start, new start, rows) that carry the storage over (RowStorage.resize)."""
        self.num_local_rows, moves = self._place(rows)
        for t in rows:
            self.local_base[t] = self.base[t]
        self.local_space[1] = self.num_local_rows
        return moves

    def owner(self, keys: torch.Tensor) -> torch.Tensor:
        """Owner rank of each static key (kernels.ownership.owner_of: the exchange's)."""
        if keys.device == self.table_offsets.device:
            return owner_of(keys, self.table_offsets, self.table_owner, self.world_size)
        return owner_of(keys, self._host_offsets, self._host_owner, self.world_size)

    def holds(self, t: int, rows: torch.Tensor) -> torch.Tensor:
        """Mask of the ids (of static table t, any values) whose rows this rank stores."""
        n = self.tables[t].num_embeddings
        keys = rows.clamp(0, n - 1) + int(self._host_offsets[t])
        return (rows >= 0) & (rows < n) & (self.owner(keys) == self.rank)

    def local_rows(self, keys: torch.Tensor) -> torch.Tensor:
        """Static keys this rank holds -> their storage rows."""
        return local_rows(
            keys, self.table_offsets, self.table_owner, self.local_base, self.world_size
        )

    def table_local_rows(self, t: int, rows: torch.Tensor) -> torch.Tensor:
        """Ids of static table t that this rank holds (any device) -> their storage rows."""
        return self.local_rows(rows.to(self.table_offsets.device) + int(self._host_offsets[t]))

    def global_rows(self, t: int) -> torch.Tensor:
        """Ids of static table t that this rank stores, in storage order (host tensor)."""
        if self.count[t] == 0:
            return torch.zeros(0, dtype=torch.int64)
        if self.kinds[t] == "row":
            return torch.arange(self.rank, self.tables[t].num_embeddings, self.world_size)
        return torch.arange(self.tables[t].num_embeddings)

    def primary(self, t: int) -> bool:
        """Whether this rank's copy of table t is the one to report (replicated: rank 0's)."""
        return self.kinds[t] != "replicated" or self.rank == 0
