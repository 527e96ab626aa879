"""RowStorage: the tensors stored per local row, on the device.

Which table's row sits where is embedding.layout's; this holds the rows: weights (storage
dtype), sparse optimizer state (kernels.SparseOptimizer.init_state) and the access statistics of exports
(DeepRec EV): lookups per row (every id occurrence in a bag counts, counted by the requester, so
totals do not depend on W) and the training step (num_updates, 1-based) of the row's last update.
"""

from __future__ import annotations

import torch

from embedding.layout import ShardLayout
from kernels import SparseOptimizer
from kernels.hashing import splitmix64, uniform


class RowStorage:
    """weight [rows, D], state {name: [rows, ...]}, freq [rows], last_step [rows] (int64)."""

    def __init__(
        self, num_rows: int, dim: int, dtype: torch.dtype, optimizer: SparseOptimizer, device
    ):
        # made on the device: a host copy of 10s of GB would be slow and may not fit
        self.weight = torch.empty(num_rows, dim, dtype=dtype, device=device)
        self.state = optimizer.init_state(num_rows, dim, device)
        self.freq = torch.zeros(num_rows, dtype=torch.int64, device=device)
        self.last_step = torch.zeros(num_rows, dtype=torch.int64, device=device)

    def tracked(self) -> dict[str, torch.Tensor]:
        """Everything stored per row: weights, optimizer state, access statistics."""
        return {"weight": self.weight, **self.state, "freq": self.freq, "last_step": self.last_step}

    def init_weights(self, layout: ShardLayout, seed: int) -> None:
        """Static tables' rows uniform(+-sqrt(1/rows)) from a hash of (seed, table, row, d): the
        same values under any plan and on any device (integer hashing and IEEE float64 arithmetic
        only), computed where the weights live. Every other row zero: the null row reads zeros,
        dynamic rows are set on admission (embedding.dynamic.init_rows)."""
        device, dim = self.weight.device, self.weight.shape[1]
        d = torch.arange(dim, dtype=torch.int64, device=device)
        # chunks bound the temporaries
        chunk_rows = max(1, (1 << 24 if device.type == "cuda" else 1 << 20) // max(dim, 1))
        for t, table in enumerate(layout.tables):
            if table.dynamic:
                continue
            key = int(
                splitmix64(
                    torch.tensor([seed * 1_000_003 + layout.table_ids[t] + 1], dtype=torch.int64)
                )[0]
            )
            bound = (1.0 / table.num_embeddings) ** 0.5
            rows = layout.global_rows(t).to(device)
            for start in range(0, rows.numel(), chunk_rows):
                chunk = rows[start : start + chunk_rows]
                values = (2.0 * uniform((chunk[:, None] * dim + d) ^ key) - 1.0) * bound
                first = layout.base[t] + start
                self.weight[first : first + chunk.numel()] = values.to(self.weight.dtype)
        self.weight[layout.num_static_rows :] = 0

    def zero_row(self, row: int) -> None:
        """Every tracked value of one row back to zero."""
        for value in self.tracked().values():
            value[row] = 0

    def resize(self, num_rows: int, moves: list[tuple[int, int, int]]) -> None:
        """Reallocate to num_rows rows: rows [src, src + n) move to [dst, dst + n) for each
        (src, dst, n) of moves, the others are zero."""

        def moved(old: torch.Tensor) -> torch.Tensor:
            new = torch.zeros(num_rows, *old.shape[1:], dtype=old.dtype, device=old.device)
            for src, dst, n in moves:
                new[dst : dst + n] = old[src : src + n]
            return new

        self.weight = moved(self.weight)
        self.state = {name: moved(value) for name, value in self.state.items()}
        self.freq = moved(self.freq)
        self.last_step = moved(self.last_step)
