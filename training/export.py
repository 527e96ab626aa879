"""Embedding export for serving and warm starts (DeepRec's format): per table the exported rows' keys,
values, lookup counts and last update step, and a meta.json.

    <dir>/<table>/{keys,values,freq,last_step}.npy     sorted by key: row ids (static), raw ids (dynamic)
    <dir>/meta.json                                    step, filters, each table's dim, kind and rows
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch

EXPORT_FILES = ("keys", "values", "freq", "last_step")


def export_embeddings(
    emb, out_dir: str, min_freq: int, rank: int, since_step: int = 0
) -> dict[str, int]:
    """Collective. Rank 0 writes the rows of emb (a ShardedEmbeddingCollection) looked up at least
    max(min_freq, 1) times and updated after since_step (an incremental export) into out_dir. Only the exported
    rows are gathered, one table at a time. Returns {table: rows exported}."""
    counts, tables = {}, {}
    for t, table in enumerate(emb.tables):
        gathered = [
            p
            for p in emb.exchange.gather_objects(emb.export_rows(t, min_freq, since_step))
            if p is not None
        ]
        keys = torch.cat([p[0] for p in gathered])
        counts[table.name] = keys.numel()
        tables[table.name] = {
            "dim": table.dim,
            "dynamic": table.dynamic is not None,
            "rows": keys.numel(),
            "num_embeddings": table.num_embeddings,
        }
        if rank == 0:
            order = torch.argsort(keys)
            d = os.path.join(out_dir, table.name)
            os.makedirs(d, exist_ok=True)
            for i, name in enumerate(EXPORT_FILES):
                np.save(
                    os.path.join(d, f"{name}.npy"),
                    torch.cat([p[i] for p in gathered])[order].numpy(),
                )
    if rank == 0:
        meta = {
            "step": emb.num_updates,
            "since_step": since_step,
            "min_freq": min_freq,
            "tables": tables,
        }
        with open(os.path.join(out_dir, "meta.json"), "w") as f:
            json.dump(meta, f, indent=1)
    return counts


def load_export(out_dir: str, table: str) -> dict[str, np.ndarray]:
    return {name: np.load(os.path.join(out_dir, table, f"{name}.npy")) for name in EXPORT_FILES}
