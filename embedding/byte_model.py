"""Bytes a training step of a ShardedEmbeddingCollection moves: what it sends to other ranks (the metrics'
exchange_bytes_per_step) and what its embedding kernels must read and write at least (achieved GB/s against
the device's memory bandwidth)."""

from __future__ import annotations

from typing import NamedTuple

import torch

from embedding.sparse_dist import SparseDist


def exchange_bytes(emb, sd: SparseDist) -> int:
    """Off-rank bytes this rank sent: keys (8 B), served rows and key gradients (D elements of the
    exchange dtype), lookup counts (4 B), split counts (8 B per key segment) and fp16 scales (4 B) per
    peer, replicated tables' all-reduce."""
    keys_out = sum(sd.send_splits) - sd.send_splits[emb.rank]
    rows_out = sum(sd.recv_splits) - sd.recv_splits[emb.rank]
    peers = emb.world_size - 1
    per_peer = 8 * (1 + len(emb.dynamic)) + (4 if emb.exchange.dtype == torch.float16 else 0)
    element = emb.exchange.element_size()
    replicated = 4 * (emb.dim + 1) * emb.layout.num_replicated_rows * (emb.world_size > 1)
    return (
        per_peer * peers
        + 8 * keys_out
        + element * emb.dim * (rows_out + keys_out)
        + 4 * keys_out
        + replicated
    )


def _sum(rows: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """The sum of a kernel's counts of updated rows, or of several kernels'."""
    if torch.is_tensor(rows):
        return rows.sum(dtype=torch.int64)
    return torch.stack([r.sum(dtype=torch.int64) for r in rows]).sum()


class MemoryBytes(NamedTuple):
    """fixed + per_row * rows bytes; rows (the rows the step updated) may be an int64 device tensor
    whose sum is that number (kernels.pool_backward_update), or a list of them (a kernel per storage:
    embedding.dynamic_steps), summed and read only when the metrics log (total())."""

    fixed: int
    per_row: int
    rows: torch.Tensor | list[torch.Tensor] | int

    @staticmethod
    def total(steps: list[MemoryBytes]) -> int:
        """The bytes of several steps, with one host read for all their device counts."""
        fixed = sum(b.fixed + b.per_row * b.rows for b in steps if isinstance(b.rows, int))
        counted = [(b.fixed, b.per_row, b.rows) for b in steps if not isinstance(b.rows, int)]
        if not counted:
            return fixed
        rows = torch.stack([_sum(r) for _, _, r in counted]).tolist()
        return fixed + sum(f + p * r for (f, p, _), r in zip(counted, rows, strict=True))


def memory_bytes(emb, sd: SparseDist, updated_rows) -> MemoryBytes:
    """Device-memory bytes the step's embedding kernels must move at least: owner row reads, pooling
    reads/writes, pooled-gradient reads, and the read-modify-write of updated rows and their optimizer
    state."""
    storage = emb.storage
    row = emb.dim * storage.weight.element_size()
    f32_row = 4 * emb.dim
    values = int(sd.inverse.numel())
    bags_out = sd.batch_size * len(emb.features) * f32_row
    state = 0
    if emb.layout.num_local_rows:
        state = sum(v[:1].numel() * v.element_size() for v in storage.state.values())
    # + the lookup count and last step of each updated row
    per_row = 2 * (row + state) + 16
    if sd.single_rank:  # rows read per value in both passes (pooling, then the fused backward)
        fixed = values * (8 + row) + bags_out + values * (4 + 4 + f32_row)
        return MemoryBytes(fixed, per_row, updated_rows)
    wire = emb.exchange.element_size() * emb.dim if emb.exchange.distributed else row
    received = sd.owner_rows.numel()
    # owner: rows read and written in the wire dtype; requester: pooled from them
    forward = received * (8 + row + wire) + values * (8 + wire) + bags_out
    # requester: sorted values, pooled gradients read, unique gradients written; owner: received
    # gradients read in the merge (+ its sort)
    backward = (
        bags_out + values * 16 + sd.unique_keys.numel() * (wire + 4) + received * (f32_row + 16)
    )
    return MemoryBytes(forward + backward, per_row, updated_rows)
