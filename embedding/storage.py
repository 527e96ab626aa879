"""RowStorage: the tensors stored per local row, on the device.

Which table's row sits where is embedding.layout's; this holds the rows: weights (storage
dtype), sparse optimizer state (kernels.SparseOptimizer.init_state) and the access statistics of exports
(DeepRec EV): lookups per row (every id occurrence in a bag counts, counted by the requester, so
totals do not depend on W) and the training step (num_updates, 1-based) of the row's last update.

The static tables' rows (and the null row) are one RowStorage; each dynamic table has a RowStorage of
its own (``tables[t]``, made by add_table), so that growing it (resize) allocates that table's rows
only and never copies the static rows or another table's.
"""

from __future__ import annotations

import torch

from embedding.layout import ShardLayout
from kernels import SparseOptimizer
from kernels.hashing import splitmix64, uniform


def static_rows(seed: int, t: int, num_embeddings: int, rows: torch.Tensor, dim: int):
    """float64 initial weights [len(rows), dim] of ids `rows` of static table t (on rows' device)."""
    key = int(splitmix64(torch.tensor([seed * 1_000_003 + t + 1], dtype=torch.int64))[0])
    d = torch.arange(dim, dtype=torch.int64, device=rows.device)
    bound = (1.0 / num_embeddings) ** 0.5
    return (2.0 * uniform((rows[:, None] * dim + d) ^ key) - 1.0) * bound


class RowStorage:
    """weight [rows, D], state {name: [rows, ...]}, freq [rows], last_step [rows] (int64)."""

    def __init__(
        self,
        num_rows: int,
        dim: int,
        dtype: torch.dtype,
        optimizer: SparseOptimizer,
        device,
        zero: bool = False,
    ):
        self.optimizer = optimizer
        # made on the device: a host copy of 10s of GB would be slow and may not fit; static weights
        # are all written by init_weights, so they need no zero fill
        make = torch.zeros if zero else torch.empty
        self.weight = make(num_rows, dim, dtype=dtype, device=device)
        self.state = optimizer.init_state(num_rows, dim, device)
        self.freq = torch.zeros(num_rows, dtype=torch.int64, device=device)
        self.last_step = torch.zeros(num_rows, dtype=torch.int64, device=device)
        # dynamic table index -> its own storage
        self.tables: dict[int, RowStorage] = {}
        # embedding.host_tier.HostTier of the tables kept in host memory, if any (set by the
        # collection): tables as state read and write their rows through it
        self.tier = None

    def add_table(self, t: int, num_rows: int) -> RowStorage:
        """A storage of num_rows zero rows for dynamic table t."""
        w = self.weight
        self.tables[t] = RowStorage(
            num_rows, w.shape[1], w.dtype, self.optimizer, w.device, zero=True
        )
        return self.tables[t]

    def of(self, t: int) -> RowStorage:
        """The storage holding table t's rows: its own (dynamic) or this one (static)."""
        return self.tables.get(t, self)

    def tracked(self, t: int | None = None) -> dict[str, torch.Tensor]:
        """Everything stored per row: weights, optimizer state, access statistics (of the storage
        holding table t's rows; None: this one)."""
        s = self if t is None else self.of(t)
        return {"weight": s.weight, **s.state, "freq": s.freq, "last_step": s.last_step}

    def init_weights(self, layout: ShardLayout, seed: int) -> None:
        """Static tables' rows uniform(+-sqrt(1/rows)) from a hash of (seed, table, row, d): the
        same values under any plan and on any device (integer hashing and IEEE float64 arithmetic
        only), computed where the weights live (static_rows). Every other row zero: the null row
        reads zeros, dynamic rows are set on admission (embedding.dynamic.init_rows), host-tier
        tables' rows are the tier's (embedding.host_tier) and their cache slots start empty."""
        device, dim = self.weight.device, self.weight.shape[1]
        # chunks bound the temporaries
        chunk_rows = max(1, (1 << 24 if device.type == "cuda" else 1 << 20) // max(dim, 1))
        for t, table in enumerate(layout.tables):
            if table.dynamic or layout.cache_rows[t]:
                if layout.cache_rows[t]:
                    first = layout.slot_base[t]
                    self.weight[first : first + layout.cache_rows[t]] = 0
                continue
            rows = layout.global_rows(t).to(device)
            for start in range(0, rows.numel(), chunk_rows):
                chunk = rows[start : start + chunk_rows]
                first = layout.base[t] + start
                values = static_rows(seed, layout.table_ids[t], table.num_embeddings, chunk, dim)
                self.weight[first : first + chunk.numel()] = values.to(self.weight.dtype)
        self.weight[layout.num_static_rows :] = 0

    def resize(self, num_rows: int) -> None:
        """Reallocate this storage to num_rows rows (never fewer): rows kept where they are, the new
        ones zero. Only this storage's tensors are allocated (its old ones are freed after the copy)."""

        def grown(old: torch.Tensor) -> torch.Tensor:
            new = torch.empty(num_rows, *old.shape[1:], dtype=old.dtype, device=old.device)
            new[: old.shape[0]] = old
            new[old.shape[0] :] = 0
            return new

        self.weight = grown(self.weight)
        self.state = {name: grown(value) for name, value in self.state.items()}
        self.freq = grown(self.freq)
        self.last_step = grown(self.last_step)
