"""DynamicSteps: the step's kernels over the dynamic tables' own storages (embedding.storage).

The collection runs each kernel of the step once over the static storage, where every dynamic key
reads the static null row; these run it once more per dynamic table over the table's storage and put
the results where the null row's were. Launches this adds per dynamic table and step (the CPU census'
prediction of CUDA launches, docs/dynamic_tables.md "Growth"): on the exchange path a lookup and its
scatter into the served rows, the gathers of the table's gradients and counts and merge_update (11);
on a single rank the table's bag offsets, gather_pool and its copy into the pooled output and
pool_backward_update (10). A table with no ids in the batch launches none of these.
"""

from __future__ import annotations

import torch

from embedding.layout import ShardLayout
from embedding.sparse_dist import SparseDist
from embedding.storage import RowStorage
from kernels import gather_pool, lookup, merge_update, pool_backward_update


def chunks(counts: list[list[int]], segment: int, device) -> torch.Tensor:
    """Positions of one segment's keys in a buffer laid out rank-major, then segment
    (counts[rank][segment] keys each)."""
    parts, offset = [], 0
    for row in counts:
        for s, n in enumerate(row):
            if s == segment and n:
                parts.append(torch.arange(offset, offset + n, device=device))
            offset += n
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64, device=device)


class DynamicSteps:
    """Mixed into embedding.dynamic_tables.DynamicTables: needs ``storage`` (RowStorage, one per
    dynamic table in ``storage.tables``) and ``feature_range`` ({table: (first, end) feature});
    ``sd.pieces`` is set by its compute (local_rows, fill_value_rows)."""

    layout: ShardLayout
    storage: RowStorage
    feature_range: dict[int, tuple[int, int]]

    def static_rows(self, sd: SparseDist) -> torch.Tensor:
        """Static storage rows sd reads, every dynamic key reading the null row: on a single rank
        each value's (sd.value_rows, set in place), else each received key's."""
        null = self.layout.null_row
        if sd.single_rank:
            for _, pos, *_ in sd.dynamic:
                sd.value_rows[pos] = null
            return sd.value_rows
        local = torch.full_like(sd.recv_keys, null)
        static = chunks(sd.segments, 0, sd.recv_keys.device)
        local[static] = self.layout.local_rows(sd.recv_keys[static])
        return local

    def serve(self, sd: SparseDist, served: torch.Tensor, out_dtype) -> None:
        """Exchange path: the received dynamic keys' rows into served (a launch pair per table)."""
        for t, pos, rows in sd.pieces:
            if rows.numel():
                served[pos] = lookup(self.storage.tables[t].weight, rows, out_dtype=out_dtype)

    def pool(self, sd: SparseDist, pooled: torch.Tensor, feature_mean: torch.Tensor) -> None:
        """Single rank: each dynamic table's features of pooled [B, F, D], pooled from its storage."""
        b = sd.batch_size
        for t, offsets, rows in sd.pieces:
            if offsets is not None:
                f0, f1 = self.feature_range[t]
                weight = self.storage.tables[t].weight
                pooled[:, f0:f1] = gather_pool(weight, rows, offsets, b, feature_mean[f0:f1])

    def update_values(self, sd, grad_pooled, feature_mean, step, optimizer) -> list[torch.Tensor]:
        """Single rank: the fused backward of each dynamic table's values, in its storage; returns
        the kernels' counts of rows updated."""
        out = []
        for t, offsets, rows in sd.pieces:
            if offsets is not None:
                f0, f1 = self.feature_range[t]
                s = self.storage.tables[t]
                grad, mean = grad_pooled[:, f0:f1], feature_mean[f0:f1]
                args = (s.weight, s.state, s.freq, s.last_step, step, rows, offsets, grad, mean)
                out.append(pool_backward_update(*args, optimizer))
        return out

    def merge(self, sd, grads, counts, step, optimizer) -> list[torch.Tensor]:
        """Exchange path: the owner's update of the received dynamic keys' rows, in their tables'
        storages; returns the kernels' counts of rows updated."""
        out = []
        for t, pos, rows in sd.pieces:
            if rows.numel():
                s = self.storage.tables[t]
                args = (s.weight, s.state, s.freq, s.last_step, step, rows, grads[pos], counts[pos])
                out.append(merge_update(*args, optimizer))
        return out
