"""Print a config's sharding plan, host tier included, without building anything:

    python -m training.plan --config configs/dcnv2_criteo_1tb.toml --world-size 1 \
        --embedding.memory_budget_bytes 64424509440

The same table train.py prints at start-up (embedding.planner.ShardingPlan.format): per table its
placement, device bytes per rank, device cache rows (host tier) and host bytes per rank. Config
keys as for train.py; the tables are the config's (a dataset's sizes need --data.path's meta.json,
which train.py reads: here the config's num_embeddings)."""

from __future__ import annotations

import sys

from embedding.tables import resolve_tables
from training.build import sharding_plan
from training.config import load_config


def main(argv: list[str] | None = None) -> str:
    argv = list(sys.argv[1:] if argv is None else argv)
    world_size = 1
    if "--world-size" in argv:
        i = argv.index("--world-size")
        world_size = int(argv[i + 1])
        del argv[i : i + 2]
    cfg = load_config(argv)
    tables = resolve_tables(cfg.embedding)
    text = f"world_size={world_size}\n{sharding_plan(cfg, tables, world_size).format(tables)}"
    print(text)
    return text


if __name__ == "__main__":
    main()
