"""Workload shapes of the kernel microbenchmarks: the MLPerf DLRM-DCNv2 tables, one rank's share of
them, and batches whose ids follow the synthetic data's Zipf law (pipeline/synthetic.py).

What a benchmark reads must be what a training step reads: random rows of a table the size of one
owner's shard, drawn from a power law, never ``arange`` rows (a sequential copy, not a gather).

- ``"dlrm"``: MLPerf DLRM-DCNv2 (26 tables, 204,184,588 rows, D = 128) over W = 8 GPUs: one rank's
  local batch (65536 / 8 = 8192 samples, the MLPerf multi-hot sizes: 1,753,088 ids) and, for the
  owner-side kernels, each table's 1/8 shard (25,523,083 rows x 128 fp32 = 13.1 GB).
- ``"medium"``: the same tables over 64 shards (3.2M rows, 1.6 GB), batch 1024: a CPU-sized slice.
- ``"small"``: 4 small tables over 2 shards, variable bags: small enough for the Triton interpreter.
"""

from __future__ import annotations

import math
import os

import torch

from pipeline.synthetic import zipf_ids
from training.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# MLPerf DLRM-DCNv2 (Criteo 1TB, max_ind_range 40M), as the training config has it: rows and multi-hot
# size per table, and the ids' Zipf exponent
_MLPERF = load_config(["--config", os.path.join(ROOT, "configs", "dcnv2_criteo_1tb.toml")])
DLRM_ROWS = [t.num_embeddings for t in _MLPERF.embedding.tables]
DLRM_HOT = list(_MLPERF.data.multi_hot_sizes)
ZIPF_EXPONENT = _MLPERF.data.zipf_exponent

# batch: one rank's samples per step; world: the shards a table is split into (owner-side kernels read
# one); fixed_bags: every bag holds exactly its table's multi-hot size (MLPerf), else 0..2h ids
SIZES = {
    "small": {
        "batch": 32,
        "rows": [1000, 50, 20000, 7],
        "hot": [1, 3, 2, 1],
        "dim": 16,
        "world": 2,
        "fixed_bags": False,
    },
    "medium": {
        "batch": 1024,
        "rows": DLRM_ROWS,
        "hot": DLRM_HOT,
        "dim": 128,
        "world": 64,
        "fixed_bags": True,
    },
    "dlrm": {
        "batch": 8192,
        "rows": DLRM_ROWS,
        "hot": DLRM_HOT,
        "dim": 128,
        "world": 8,
        "fixed_bags": True,
    },
}

# a prime above every table size: id -> id * SCATTER_MUL mod rows is a bijection of a table's rows
SCATTER_MUL = 2654435761


def shard_rows(size: str) -> list[int]:
    """Rows per table of one owner's shard: each table split evenly over the size's world."""
    spec = SIZES[size]
    return [math.ceil(r / spec["world"]) for r in spec["rows"]]


def scatter_rows(ids: torch.Tensor, num_rows: int) -> torch.Tensor:
    """Spread Zipf ids over the table: the synthetic data's hot ids are rows 0, 1, 2, ..., adjacent in
    memory; hashed ids (Criteo preprocessing) put them anywhere. A bijection, so the law is unchanged."""
    assert num_rows < SCATTER_MUL
    return ids * SCATTER_MUL % num_rows


def make_batch(
    size: str,
    device: torch.device,
    seed: int = 0,
    exponent: float = ZIPF_EXPONENT,
    shard: bool = False,
    scatter: bool = True,
) -> dict:
    """One rank's batch in the KeyedJagged layout: fused keys [N] (table offset + row), offsets
    [F*B+1] (bags feature-major), table offsets [T+1].

    Ids are Zipf(exponent) per table as pipeline.synthetic.zipf_ids draws them; with ``shard`` the
    tables are one owner's shard (shard_rows) and the keys are rows of that shard's storage; with
    ``scatter`` the hot rows are spread over the table (scatter_rows)."""
    spec = SIZES[size]
    gen = torch.Generator().manual_seed(seed)
    batch, hot = spec["batch"], spec["hot"]
    rows = shard_rows(size) if shard else spec["rows"]
    table_offsets = torch.tensor([0, *torch.tensor(rows).cumsum(0).tolist()], dtype=torch.int64)
    lengths, values = [], []
    for t, (num_rows, h) in enumerate(zip(rows, hot, strict=True)):
        if spec["fixed_bags"]:
            length = torch.full((batch,), h, dtype=torch.int64)
        else:  # bag lengths in [0, 2h]: empty bags and longer ones, mean h
            length = torch.randint(0, 2 * h + 1, (batch,), generator=gen)
        u = torch.rand(int(length.sum()), generator=gen, dtype=torch.float64)
        ids = zipf_ids(u, num_rows, exponent)
        if scatter:
            ids = scatter_rows(ids, num_rows)
        lengths.append(length)
        values.append(ids + table_offsets[t])
    lengths = torch.cat(lengths)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    return {
        "keys": torch.cat(values).to(device),
        "offsets": offsets.to(device),
        "table_offsets": table_offsets.to(device),
        "batch": batch,
        "num_features": len(rows),
        "dim": spec["dim"],
        "exponent": exponent,
        "scatter": scatter,
    }


def describe(batch: dict, size: str, shard: bool) -> str:
    """One line naming the workload: shape, ids law and, for a shard, its rows and bytes."""
    rows = int(batch["table_offsets"][-1])
    law = f"Zipf {batch['exponent']:g}, {'scattered' if batch['scatter'] else 'hot rows first'}"
    where = f"1/{SIZES[size]['world']} shard: {rows:,} rows" if shard else f"{rows:,} rows"
    return (
        f"B={batch['batch']} F={batch['num_features']} D={batch['dim']} N={batch['keys'].numel():,} "
        f"ids ({law}) over {where}"
    )
