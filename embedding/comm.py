"""Collectives of the embedding exchange; with no process group (W=1) they are identities."""

from __future__ import annotations

import torch
import torch.distributed as dist


class Exchange:
    """all-to-all with variable splits on one process group (None for a single process)."""

    def __init__(self, group, rank: int, world_size: int):
        self.group = group
        self.rank = rank
        self.world_size = world_size

    @property
    def distributed(self) -> bool:
        return self.group is not None and self.world_size > 1

    def exchange_counts(self, send_counts: torch.Tensor) -> torch.Tensor:
        """Each rank tells every other how many items it will send: [W] -> [W]."""
        if not self.distributed:
            return send_counts.clone()
        recv = torch.empty_like(send_counts)
        dist.all_to_all_single(recv, send_counts, group=self.group)
        return recv

    def start(self, tensor: torch.Tensor, send_splits: list[int], recv_splits: list[int]):
        """Begin sending tensor's rows split by send_splits; returns (output, work or None)."""
        if not self.distributed:
            return tensor, None
        out = tensor.new_empty((sum(recv_splits), *tensor.shape[1:]))
        work = dist.all_to_all_single(out, tensor.contiguous(), recv_splits, send_splits, group=self.group, async_op=True)
        return out, work

    def all_to_all(self, tensor: torch.Tensor, send_splits: list[int], recv_splits: list[int]) -> torch.Tensor:
        out, work = self.start(tensor, send_splits, recv_splits)
        if work is not None:
            work.wait()
        return out

    def all_reduce_(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            dist.all_reduce(tensor, group=self.group)
        return tensor

    def gather_objects(self, obj) -> list:
        if not self.distributed:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.group)
        return out
