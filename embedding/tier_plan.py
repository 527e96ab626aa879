"""The planner's host tier (embedding.host_tier): which static tables keep their rows in host memory,
how many device cache rows each gets per rank, and the bytes that costs on the host and the device.

A tiered table costs, per rank holding n of its rows, ``cache_rows * row`` device bytes for the
cached rows plus ``n * MAP_BYTES`` for the device map (local row -> cache slot), and
``n * (row + HOST_ROW_EXTRA)`` host bytes: every row with its optimizer state, its lookup count and
last step, the cache's lookup count (LFU) and the slot it sits in.
"""

from __future__ import annotations

# host bytes per tiered row besides weight + optimizer state: freq and last_step (int64 each), the
# lookup count the LFU policy ranks by (int64) and the row's cache slot (int32)
HOST_ROW_EXTRA = 8 + 8 + 8 + 4
# device bytes per tiered row: the int32 map from local row to cache slot
MAP_BYTES = 4


def local_rows(placement, num_embeddings: int, rank: int, world_size: int) -> int:
    """Rows of a static table that rank stores under placement (a TablePlacement)."""
    if placement.placement == "row":
        return len(range(rank, num_embeddings, world_size))
    if placement.placement == "table":
        return num_embeddings if placement.owner == rank else 0
    return num_embeddings


def put_on_tier(plan, table, cache_rows: int, row: int) -> None:
    """Keep table's rows in host memory with cache_rows device rows per rank (fewer where a rank
    holds fewer rows): its placement's device and host bytes per rank are set."""
    p = plan.placements[table.name]
    p.cache_rows = cache_rows
    p.host_bytes_per_rank = [0] * plan.world_size
    for r in range(plan.world_size):
        n = local_rows(p, table.num_embeddings, r, plan.world_size)
        p.bytes_per_rank[r] = min(cache_rows, n) * row + n * MAP_BYTES if n else 0
        p.host_bytes_per_rank[r] = n * (row + HOST_ROW_EXTRA)


def place_on_tier(plan, tables, row_bytes_of, budget: float, floor: dict[str, int]) -> None:
    """Tables with cache_rows set go on the tier. Then, while a rank is over budget or cannot hold
    the cache floors (floor[name]: rows the batches in flight may read, 0 if not given), the largest
    tiering candidates (static, not replicated) go on the tier too, largest first; each gets its
    floor and a share of the device bytes left, in proportion to the rows it holds there."""
    for t in tables:
        if t.cache_rows:
            if t.dynamic or plan.placements[t.name].placement == "replicated":
                raise ValueError(
                    f"table {t.name!r}: cache_rows needs a static table that is not replicated"
                )
            put_on_tier(plan, t, t.cache_rows, row_bytes_of(t))
    if budget == float("inf"):
        return
    candidates = sorted(
        (
            t
            for t in tables
            if not t.dynamic
            and not t.cache_rows
            and plan.placements[t.name].placement != "replicated"
        ),
        key=lambda t: (-t.num_embeddings * row_bytes_of(t), t.name),
    )
    world, auto = plan.world_size, []

    def spare() -> list[float]:
        """Device bytes left on each rank once the auto-tiered tables hold their floors."""
        left = [budget - b for b in plan.rank_bytes()]
        for t in auto:
            p = plan.placements[t.name]
            for r in range(world):
                n = local_rows(p, t.num_embeddings, r, world)
                left[r] -= min(floor.get(t.name, 0), n) * row_bytes_of(t)
        return left

    while candidates and min(spare()) < 0:
        auto.append(candidates.pop(0))
        put_on_tier(plan, auto[-1], 0, row_bytes_of(auto[-1]))
    left = spare()
    held = {
        t.name: [
            local_rows(plan.placements[t.name], t.num_embeddings, r, world) for r in range(world)
        ]
        for t in auto
    }
    total = [sum(held[t.name][r] for t in auto) for r in range(world)]
    for t in auto:
        share = [
            int(max(left[r], 0) * held[t.name][r] / total[r]) // row_bytes_of(t)
            for r in range(world)
            if held[t.name][r]
        ]
        put_on_tier(plan, t, max(1, floor.get(t.name, 0) + min(share)), row_bytes_of(t))
