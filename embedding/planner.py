"""Sharding planner: decides where every table lives and prints the plan.

Placements
- ``table``: the whole table on one rank (greedy balance of bytes and lookups).
- ``row``: rows spread over all ranks, owner = row % W. Interleaving (not contiguous blocks)
  because ids are power-law distributed with the hot ids clustered (often at low ids after
  frequency-sorted vocabularies): interleaving spreads the hot rows, and so the lookups,
  evenly over ranks, where contiguous blocks would pile them on rank 0.
- ``replicated``: a copy on every rank, looked up locally; its gradients are all-reduced so the
  copies stay identical. Cheaper than all-to-all for tiny tables.
- ``key``: dynamic tables (embedding.dynamic), always: keys spread over all ranks by a hash of the key.
  Their bytes are the initial capacity's rows plus the hash index (they may grow later).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from embedding.tables import Table, dynamic_bytes, row_bytes
from embedding.tier_plan import place_on_tier


@dataclass
class TablePlacement:
    placement: str  # table, row, replicated or key (dynamic tables)
    owner: int  # rank for table-wise; -1 otherwise
    bytes_per_rank: list[int]  # device bytes
    # host tier (embedding.tier_plan): device cache rows per rank (0: all rows on the device) and
    # the host bytes per rank of the table's rows
    cache_rows: int = 0
    host_bytes_per_rank: list[int] | None = None


@dataclass
class ShardingPlan:
    world_size: int
    placements: dict[str, TablePlacement] = field(default_factory=dict)
    # the host tier's eviction policy ("lru" or "lfu") and memmap directory ("": host RAM)
    cache_policy: str = "lru"
    host_dir: str = ""

    def rank_bytes(self) -> list[int]:
        return [
            sum(p.bytes_per_rank[r] for p in self.placements.values())
            for r in range(self.world_size)
        ]

    def host_bytes(self) -> list[int]:
        """Host-memory bytes per rank of the tables on the host tier."""
        return [
            sum(
                (p.host_bytes_per_rank or [0] * self.world_size)[r]
                for p in self.placements.values()
            )
            for r in range(self.world_size)
        ]

    def format(self, tables: list[Table]) -> str:
        """A readable table: one line per embedding table, then the per-rank totals."""
        header = (
            f"{'table':<16} {'rows':>12} {'dim':>5} {'placement':<11} {'ranks':<12} "
            f"{'bytes/rank':>12} {'cache rows':>12} {'host/rank':>10}"
        )
        lines = [header, "-" * len(header)]
        for t in tables:
            p = self.placements[t.name]
            ranks = str(p.owner) if p.placement == "table" else f"0-{self.world_size - 1}"
            nonzero = [b for b in p.bytes_per_rank if b]
            # dynamic: capacity, may grow
            rows = f"{t.dynamic.capacity:,}+" if t.dynamic else f"{t.num_embeddings:,}"
            host = max(p.host_bytes_per_rank or [0])
            cache = f"{p.cache_rows:,}" if p.cache_rows else "all"
            lines.append(
                f"{t.name:<16} {rows:>12} {t.dim:>5} {p.placement:<11} {ranks:<12} "
                f"{_human(max(nonzero) if nonzero else 0):>12} {cache:>12} {_human(host):>10}"
            )
        lines.append("-" * len(header))
        if any(p.cache_rows for p in self.placements.values()):
            lines.append(
                "host tier per rank: "
                + ", ".join(f"r{r}={_human(b)}" for r, b in enumerate(self.host_bytes()))
            )
        lines.append(
            "total per rank: "
            + ", ".join(f"r{r}={_human(b)}" for r, b in enumerate(self.rank_bytes()))
        )
        return "\n".join(lines)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f}{unit}" if unit != "B" else f"{int(n)}B"
        n /= 1024
    return str(n)


def plan_sharding(
    tables: list[Table],
    world_size: int,
    *,
    storage_dtype: str = "float32",
    optimizer: str = "adagrad",
    default_placement: str = "auto",
    replicate_below_bytes: int = 1 << 20,
    memory_budget_bytes: int = 0,
    cache_floor: dict[str, int] | None = None,
) -> ShardingPlan:
    """Place every table; a table's own placement (if not auto) wins over default_placement.

    auto: replicated below replicate_below_bytes; row-wise if the table alone exceeds the
    per-rank memory budget or an even share (the non-replicated tables' bytes / W), since
    table-wise it would leave its owner above every other rank whatever the rest does;
    otherwise table-wise, greedily placing the largest tables first on the rank with the least
    (bytes share + lookups share) so far.
    Over budget, the largest tables go on the host tier (embedding.tier_plan; cache_floor: the
    device cache rows each tiered table needs at least).
    Raises ValueError naming the tables that do not fit the budget and by how much.
    """
    plan = ShardingPlan(world_size)
    budget = memory_budget_bytes or float("inf")
    sizes = {
        t.name: (
            dynamic_bytes(t, storage_dtype, optimizer)
            if t.dynamic
            else t.num_embeddings * row_bytes(t.dim, storage_dtype, optimizer)
        )
        for t in tables
    }
    chosen = _choose(tables, world_size, sizes, default_placement, replicate_below_bytes, budget)
    load_bytes = [0] * world_size
    load_lookups = [0.0] * world_size
    for t in tables:
        if chosen[t.name] != "table":
            per = _spread(t, chosen[t.name], sizes[t.name], world_size)
            for r in range(world_size):
                load_bytes[r] += per[r]
                if chosen[t.name] != "replicated":  # every rank serves its share of the lookups
                    load_lookups[r] += t.lookups_per_sample / world_size
            plan.placements[t.name] = TablePlacement(chosen[t.name], -1, per)
    _place_whole_tables(
        plan,
        [t for t in tables if chosen[t.name] == "table"],
        tables,
        sizes,
        load_bytes,
        load_lookups,
    )
    plan.placements = {t.name: plan.placements[t.name] for t in tables}
    row = lambda t: row_bytes(t.dim, storage_dtype, optimizer)  # noqa: E731
    place_on_tier(plan, tables, row, budget, cache_floor or {})
    _check_budget(plan, tables, sizes, chosen, budget)
    return plan


def _spread(t: Table, kind: str, size: int, world_size: int) -> list[int]:
    """Bytes on each rank of a table spread over every rank: row-wise (row % W), by key shard (keys hash
    uniformly over the key shards) or replicated."""
    if kind == "row":
        per_row = size // t.num_embeddings
        return [len(range(r, t.num_embeddings, world_size)) * per_row for r in range(world_size)]
    if kind == "key":
        shards = t.dynamic.key_shards
        return [size * len(range(r, shards, world_size)) // shards for r in range(world_size)]
    return [size] * world_size


def _place_whole_tables(
    plan,
    whole: list[Table],
    tables: list[Table],
    sizes: dict[str, int],
    load_bytes: list[int],
    load_lookups: list[float],
) -> None:
    """Table-wise tables, largest first, each on the rank with the least (bytes + lookups) share so far."""
    total_bytes = sum(sizes.values()) or 1
    total_lookups = sum(t.lookups_per_sample for t in tables) or 1.0
    world_size = plan.world_size
    for t in sorted(whole, key=lambda t: (-sizes[t.name], t.name)):
        cost = [
            load_bytes[r] / total_bytes + load_lookups[r] / total_lookups for r in range(world_size)
        ]
        owner = min(range(world_size), key=lambda r: (cost[r], r))
        load_bytes[owner] += sizes[t.name]
        load_lookups[owner] += t.lookups_per_sample
        per = [0] * world_size
        per[owner] = sizes[t.name]
        plan.placements[t.name] = TablePlacement("table", owner, per)


def _choose(
    tables: list[Table],
    world_size: int,
    sizes: dict[str, int],
    default_placement: str,
    replicate_below_bytes: int,
    budget: float,
) -> dict[str, str]:
    """Every table's placement kind (plan_sharding's rules for auto)."""
    chosen = {
        t.name: "key" if t.dynamic else t.placement if t.placement != "auto" else default_placement
        for t in tables
    }
    for t in tables:
        # a table on the host tier is never replicated (its cache would differ per rank)
        if chosen[t.name] == "auto" and sizes[t.name] < replicate_below_bytes and not t.cache_rows:
            chosen[t.name] = "replicated"
    even_share = sum(sizes[t.name] for t in tables if chosen[t.name] != "replicated") / world_size
    for t in tables:
        if chosen[t.name] == "auto":
            too_big = world_size > 1 and sizes[t.name] > min(budget, even_share)
            chosen[t.name] = "row" if too_big else "table"
    return chosen


def _check_budget(
    plan: ShardingPlan,
    tables: list[Table],
    sizes: dict[str, int],
    chosen: dict[str, str],
    budget: float,
) -> None:
    """Raise ValueError naming the ranks over budget (by how much) and the largest tables."""
    over = [(r, b) for r, b in enumerate(plan.rank_bytes()) if b > budget]
    if over:
        culprits = ", ".join(
            f"{t.name} ({_human(sizes[t.name])}, {chosen[t.name]})"
            for t in sorted(tables, key=lambda t: -sizes[t.name])[:5]
        )
        worst = ", ".join(
            f"rank {r} needs {_human(b)}, over by {_human(b - budget)}" for r, b in over
        )
        raise ValueError(
            f"sharding plan does not fit embedding.memory_budget_bytes={_human(budget)}: {worst}; "
            f"largest tables: {culprits}"
        )
